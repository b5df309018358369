"""Telemetry: what agents report about their devices, stored with retention and downsampling.

``schema`` is pure pydantic so agents can import it without Django; ``store`` is
the one place that reads and writes the telemetry tables.
"""
