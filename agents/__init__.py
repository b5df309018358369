"""The node agent: one per GPU machine, and it never imports Django or the control plane.

``agent`` registers the node and loops over heartbeats (with ``telemetry``, and the power
limits the control plane asks for, applied by a ``power`` backend), the watch of this
node's Workloads, and the ``supervisor`` that runs each as a subprocess of ``runtimes``.
``devices`` finds the GPUs (or the CPU as one device, or simulated ones). The command
line is ``flotilla agent`` or ``python -m agents`` (``cli``).
"""
