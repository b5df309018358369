"""Torch runtimes the agent starts as Workload subprocesses (serve, train)."""
