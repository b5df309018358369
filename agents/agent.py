"""The node agent: register, heartbeat, watch this node's Workloads, supervise them.

Three loops share one stop event: heartbeats (with telemetry; their answers
carry the power limits controllers want, which the power backend applies), the
watch of the Workloads bound to this node, and the supervisor pass that starts,
checks and reports processes. The agent is robust to the control plane going away:
running Workloads keep running, calls retry with jittered backoff, and the
watch resumes from its last resourceVersion (re-listing on 410 Gone).

Identity: the node token from registration is kept in the state directory, so
a restarted agent re-registers as the same node with its own credential.
"""

from __future__ import annotations

import logging
import random
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from agents import devices as device_discovery
from agents import power, telemetry
from agents.supervisor import Supervisor
from common.client import Client, ClientError
from common.envhelpers import flotilla_home

log = logging.getLogger("flotilla.agent")
WATCH_SECONDS = 25
PROGRESS_EVERY = 2.0


def default_node_name() -> str:
    host = socket.gethostname().split(".")[0].lower()
    cleaned = "".join(c if c.isalnum() else "-" for c in host).strip("-")
    return cleaned[:63] or "node"


def backoff(failures: int) -> float:
    return min(30.0, 2.0 ** min(failures, 5)) * random.uniform(0.5, 1.5)


@dataclass
class Agent:
    server: str | None
    bootstrap_token: str | None
    name: str
    state_dir: Path
    cluster: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    devices: list[dict[str, Any]] = field(default_factory=list)
    interval: float = 5.0
    grace: float = 30.0
    advertise_host: str = "127.0.0.1"
    simulate_workloads: bool = False
    power_backend: str = "off"
    stop_event: threading.Event = field(default_factory=threading.Event)
    desired: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        simulated = any(d.get("simulated") for d in self.devices)
        cpu_only = all(d.get("type") == "CPU" for d in self.devices)
        self.supervisor = Supervisor(
            self.state_dir,
            self.advertise_host,
            use_gpus=not (simulated or cpu_only),
            simulate_workloads=self.simulate_workloads,
            node_name=self.name,
            control_plane=self.control_plane,
        )
        # Simulated boards report the power range a real one would (NVML's constraints),
        # which the control plane's power-cap controller clamps to.
        for device in self.devices:
            span = power.simulated_range(device) if device.get("simulated") else None
            if span is not None:
                device.setdefault("powerLimitRangeW", list(span))
                device.setdefault("defaultPowerLimitW", span[1])
        self.power = power.make_backend(
            self.power_backend, self.devices, confirm=self.power_backend == "nvml"
        )
        self.power_limits = power.LimitFollower(self.power)
        self.lock = threading.Lock()
        self.node: Client | None = None
        self.reported: dict[str, dict[str, Any]] = {}
        self.reported_at: dict[str, float] = {}

    # --- identity ------------------------------------------------------------------

    @property
    def token_path(self) -> Path:
        return self.state_dir / "node-token"

    def register(self) -> None:
        """Register with the kept node token if there is one, else the bootstrap token."""
        body = {
            "name": self.name,
            "cluster": self.cluster,
            "labels": self.labels,
            "devices": self.devices,
            "info": {"hostname": socket.gethostname()},
        }
        tokens = []
        if self.token_path.exists():
            tokens.append(self.token_path.read_text().strip())
        if self.bootstrap_token:
            tokens.append(self.bootstrap_token)
        last_error: ClientError | None = None
        for token in tokens:
            client = Client(self.server, token, timeout=15.0)
            try:
                result = client.request("POST", "/api/v1/agent/register", json=body)
            except ClientError as exc:
                client.close()
                if exc.status in (401, 403):
                    last_error = exc
                    continue
                raise
            client.close()
            self.token_path.touch(mode=0o600)
            self.token_path.write_text(result["token"])
            self.node = Client(self.server, result["token"], timeout=WATCH_SECONDS + 20)
            self.interval = min(self.interval, float(result.get("heartbeatSeconds", self.interval)))
            # A new registration may be a new Node: apply and report its desired limits afresh.
            self.power_limits.forget()
            log.info("registered node %s with %d devices", self.name, len(self.devices))
            return
        raise last_error or ClientError("no token to register with: pass --token")

    def control_plane(self) -> tuple[str, str] | None:
        """The control plane's URL and this node's current token, for a router Workload
        (None before registering); read when it starts, so a new token reaches the next one."""
        node = self.node
        return (node.server, node.token) if node is not None and node.token else None

    # --- telemetry ----------------------------------------------------------------------

    def telemetry(self) -> dict[str, Any]:
        """Device samples plus each Workload's runtime metrics, sent with every heartbeat.

        Simulated devices take their load from the Workloads placed on them: a
        training Workload keeps its GPUs fully busy, a serving one at 60%.
        """
        load: dict[int, float] = {}
        metrics: dict[str, dict[str, float]] = {}
        for name, managed in list(self.supervisor.workloads.items()):
            if managed.phase != "Running":
                continue
            busy = 1.0 if managed.runtime == "train" else 0.6
            for index in managed.document["spec"].get("gpus", []):
                load[index] = max(load.get(index, 0.0), busy)
            numbers = runtime_metrics(managed)
            if numbers:
                metrics[name] = numbers
        limits = self.power.limits() if self.power.name == "simulate" else None
        return telemetry.collect(self.devices, load, limits=limits, workloads=metrics)

    # --- loops -----------------------------------------------------------------------

    def heartbeat(self) -> dict[str, Any]:
        """One heartbeat: telemetry, and what the power backend applied since the last one,
        out; the desired power limits back, applied before the next heartbeat reports them."""
        if self.node is None:
            self.register()
        report = self.power_limits.report
        body = {"name": self.name, "telemetry": self.telemetry(), **(report or {})}
        try:
            answer = self.node.request("POST", "/api/v1/agent/heartbeat", json=body)
        except ClientError as exc:
            if exc.status == 422 and report is not None:
                # Refused: dropped, so that the next heartbeat (without it) keeps the node alive.
                self.power_limits.sent(report)
            raise
        self.power_limits.sent(report)
        self.power_limits.follow(answer.get("powerLimits"))
        return answer

    def heartbeat_loop(self) -> None:
        failures = 0
        while not self.stop_event.is_set():
            try:
                self.heartbeat()
                failures, wait = 0, self.interval
            except ClientError as exc:
                failures += 1
                if exc.status in (401, 404):
                    self.node = None  # deleted or credential rotated: register again
                wait = backoff(failures)
                log.warning("heartbeat failed (%s); retrying in %.1fs", exc, wait)
            self.stop_event.wait(wait)

    def watch_loop(self) -> None:
        since: str | None = None
        failures = 0
        while not self.stop_event.is_set():
            node = self.node
            if node is None:
                self.stop_event.wait(0.5)
                continue
            try:
                if since is None:
                    listing = node.list("workloads", fieldSelector=f"spec.nodeName={self.name}")
                    with self.lock:
                        self.desired = {w["metadata"]["name"]: w for w in listing["items"]}
                    since = listing["metadata"]["resourceVersion"]
                else:
                    result = node.watch(
                        "workloads", since, WATCH_SECONDS, fieldSelector=f"spec.nodeName={self.name}"
                    )
                    with self.lock:
                        for event in result["events"]:
                            name = event["object"]["metadata"]["name"]
                            if event["type"] == "DELETED":
                                self.desired.pop(name, None)
                            else:
                                self.desired[name] = event["object"]
                    since = result["resourceVersion"]
                failures = 0
            except ClientError as exc:
                if exc.status == 410:
                    since = None  # history is gone: list again
                    continue
                failures += 1
                wait = backoff(failures)
                log.warning("watch failed (%s); Workloads keep running; retrying in %.1fs", exc, wait)
                self.stop_event.wait(wait)

    def supervise_loop(self) -> None:
        last_ship = 0.0
        while not self.stop_event.is_set():
            with self.lock:
                desired = dict(self.desired)
            self.supervisor.sync(desired)
            self.supervisor.tick()
            self.report_status()
            if time.monotonic() - last_ship >= 1.0:
                self.ship_logs()
                last_ship = time.monotonic()
            self.stop_event.wait(0.5)

    # --- reporting ---------------------------------------------------------------------

    def report_status(self) -> None:
        node = self.node
        if node is None:
            return
        now = time.monotonic()
        for name, managed in list(self.supervisor.workloads.items()):
            status = self.supervisor.status_of(managed)
            previous = self.reported.get(name)
            if previous == status:
                continue
            # stepTimes grows with every progress line too: it rides the same throttle
            moving = {"progress": None, "stepTimes": None}
            only_progress = previous is not None and {**previous, **moving} == {**status, **moving}
            if only_progress and now - self.reported_at.get(name, 0.0) < PROGRESS_EVERY:
                continue  # training progress: at most one report every PROGRESS_EVERY seconds
            try:
                node.request("PUT", f"/api/v1/workloads/{name}/status", json={"status": status})
                self.reported[name] = status
                self.reported_at[name] = now
            except ClientError as exc:
                if exc.status == 404:
                    self.reported.pop(name, None)
                else:
                    log.warning("could not report workload %s: %s", name, exc)
        for name in set(self.reported) - set(self.supervisor.workloads):
            del self.reported[name]

    def ship_logs(self) -> None:
        node = self.node
        if node is None:
            return
        for name, managed in list(self.supervisor.workloads.items()):
            text = self.supervisor.new_log_text(managed)
            if not text:
                continue
            try:
                node.request("POST", f"/api/v1/workloads/{name}/logs", json={"text": text})
                self.supervisor.mark_shipped(managed, text)
            except ClientError as exc:
                if exc.status != 404:
                    log.warning("could not ship logs of %s: %s", name, exc)

    # --- lifecycle ---------------------------------------------------------------------

    def run(self) -> None:
        """Heartbeats and the watch run in threads; supervision runs on the main thread.

        Workloads are forked by the supervisor and die with the thread that forked
        them (PR_SET_PDEATHSIG is per thread), so that must be the main thread, which
        lives exactly as long as the agent.
        """
        threads = [
            threading.Thread(target=self.heartbeat_loop, name="heartbeat", daemon=True),
            threading.Thread(target=self.watch_loop, name="watch", daemon=True),
        ]
        for thread in threads:
            thread.start()
        self.supervise_loop()
        log.info("draining: stopping %d workloads (grace %.0fs)", len(self.supervisor.workloads), self.grace)
        self.supervisor.stop_all(self.grace)
        self.report_status()
        self.ship_logs()
        log.info("agent stopped")

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())


def runtime_metrics(managed: Any) -> dict[str, float]:
    """Numbers the runtime reports: training progress, or the serving runtime's /stats."""
    numbers: dict[str, Any] = dict(managed.progress)
    if managed.runtime == "serve" and managed.port and managed.ready:
        try:
            numbers.update(httpx.get(f"http://127.0.0.1:{managed.port}/stats", timeout=1.0).json())
        except (httpx.HTTPError, ValueError):
            pass
    return flat_numbers(numbers)


def flat_numbers(numbers: dict[str, Any]) -> dict[str, float]:
    """Numbers at the top level, and one level down as ``outer.inner`` (the runtime's
    ``ttftSeconds: {p50, p99}`` becomes ``ttftSeconds.p50`` and ``ttftSeconds.p99``):
    telemetry metrics are flat, and latency is what a deployment's SLO is judged on."""

    def is_number(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)

    flat: dict[str, float] = {}
    for key, value in numbers.items():
        if is_number(value):
            flat[key[:64]] = float(value)
        elif isinstance(value, dict):
            for inner, number in value.items():
                if is_number(number):
                    flat[f"{key}.{inner}"[:64]] = float(number)
    return flat


def build(
    server: str | None,
    token: str | None,
    name: str | None,
    cluster: str | None,
    labels: dict[str, str],
    simulate: str | None,
    interval: float,
    state_dir: str | None = None,
    grace: float = 30.0,
    advertise_host: str = "127.0.0.1",
    simulate_workloads: bool = False,
    power_backend: str = "off",
) -> Agent:
    found = device_discovery.parse_simulate(simulate) if simulate else device_discovery.discover()
    node_name = name or default_node_name()
    return Agent(
        server=server,
        bootstrap_token=token,
        name=node_name,
        state_dir=Path(state_dir) if state_dir else flotilla_home() / "agent" / node_name,
        cluster=cluster,
        labels=labels,
        devices=found,
        interval=interval,
        grace=grace,
        advertise_host=advertise_host,
        simulate_workloads=simulate_workloads,
        power_backend=power_backend,
    )
