"""The node agent (never imports Django): device discovery, registration, heartbeats."""
