"""The agent loop: register the node, then heartbeat with jittered retries.

Robust to the control plane going away: it keeps trying with backoff and
re-registers when it comes back. Workload supervision lands with the torch
runtimes (issue 3).
"""

from __future__ import annotations

import logging
import random
import signal
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from agents import devices as device_discovery
from controlplane.client import Client, ClientError

log = logging.getLogger("flotilla.agent")


def default_node_name() -> str:
    host = socket.gethostname().split(".")[0].lower()
    cleaned = "".join(c if c.isalnum() else "-" for c in host).strip("-")
    return cleaned[:63] or "node"


@dataclass
class Agent:
    client: Client
    name: str
    cluster: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    devices: list[dict[str, Any]] = field(default_factory=list)
    interval: float = 5.0
    stop_event: threading.Event = field(default_factory=threading.Event)

    def register(self) -> dict[str, Any]:
        result = self.client.request(
            "POST",
            "/api/v1/agent/register",
            json={
                "name": self.name,
                "cluster": self.cluster,
                "labels": self.labels,
                "devices": self.devices,
                "info": {"hostname": socket.gethostname()},
            },
        )
        server_interval = float(result.get("heartbeatSeconds", self.interval))
        self.interval = min(self.interval, server_interval)
        return result

    def heartbeat(self) -> None:
        self.client.request("POST", "/api/v1/agent/heartbeat", json={"name": self.name})

    def run(self) -> None:
        registered = False
        failures = 0
        while not self.stop_event.is_set():
            try:
                if not registered:
                    self.register()
                    registered = True
                    log.info("registered node %s with %d devices", self.name, len(self.devices))
                else:
                    self.heartbeat()
                failures = 0
                wait = self.interval
            except ClientError as exc:
                failures += 1
                if exc.status == 404:
                    registered = False  # the Node was deleted: register again
                wait = min(60.0, 2.0 ** min(failures, 6)) * random.uniform(0.5, 1.5)
                log.warning("control plane unreachable or refused (%s); retrying in %.1fs", exc, wait)
            self.stop_event.wait(wait)

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())


def build(
    server: str | None,
    token: str | None,
    name: str | None,
    cluster: str | None,
    labels: dict[str, str],
    simulate: str | None,
    interval: float,
) -> Agent:
    found = device_discovery.parse_simulate(simulate) if simulate else device_discovery.discover()
    return Agent(
        client=Client(server, token, timeout=15.0),
        name=name or default_node_name(),
        cluster=cluster,
        labels=labels,
        devices=found,
        interval=interval,
    )
