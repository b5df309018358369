"""Telemetry: what agents report about their devices, stored with retention and downsampling.

``schema`` validates a sample with pydantic alone (the agent builds the same shape
in ``agents/telemetry.py`` without importing it: agents never import controlplane);
``store`` is the one place that reads and writes the telemetry tables.
"""
