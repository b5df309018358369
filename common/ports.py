"""Free local ports for the processes Flotilla starts (web servers, serving Workloads).

Pure standard library, so agents, the CLI and tests share it without pulling in more.
"""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port the OS just had free on 127.0.0.1 (there is a small race until it is bound)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
