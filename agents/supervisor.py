"""Run each Workload bound to this node as a supervised subprocess.

One ``Managed`` entry per Workload: the supervisor starts its runtime
(``python -m agents.runtimes.<runtime>``) with the GPU indices it was given,
restarts it with jittered exponential backoff when it crashes (keeping the
exit code and the last lines of its log), and stops it when the Workload goes
away. Runtimes report through JSON lines on stdout (``{"event": ...}``) and,
for serving and routing, ``GET /health``; so they need no API token of their own,
except the router, which reads its replicas from its own Workload: it gets the
node's token in its environment (never in a file or a log line) and is restarted
with the new one when the agent registers again, since registering revokes the old.

A child is started with PR_SET_PDEATHSIG on Linux: if the agent dies, its
Workloads are told to stop rather than linger as orphans holding ports and GPUs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from common.ports import free_port
from common.specs import CHECKPOINTS_KEPT, REJECTED_CHECKPOINTS_KEPT, STEP_TIMES_KEPT

log = logging.getLogger("flotilla.agent.supervisor")
RUNTIMES = {"serve", "train", "route"}
# Runtimes that answer HTTP on a port the supervisor picks: health-checked, with an endpoint.
HTTP_RUNTIMES = {"serve", "route"}
LOG_TAIL_LINES = 20
MAX_BACKOFF = 60.0


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def runs_here(document: dict[str, Any]) -> bool:
    """The agent runs a Workload unless its spec hands it to the Kubernetes executor."""
    return document.get("spec", {}).get("executor", "agent") != "kubernetes"


@dataclass
class TrainingHistory:
    """A training runtime's checkpoint, restore and step-time events, kept by the Workload's
    ``Managed`` entry and so across restarts of its process: a run killed and resumed shows
    what its earlier runs saved, and its step times on either side of the restart."""

    checkpoints: deque = field(default_factory=lambda: deque(maxlen=CHECKPOINTS_KEPT))
    rejected: deque = field(default_factory=lambda: deque(maxlen=REJECTED_CHECKPOINTS_KEPT))
    step_times: deque = field(default_factory=lambda: deque(maxlen=STEP_TIMES_KEPT))
    restored_from: dict[str, Any] | None = None

    def observe(self, kind: str, event: dict[str, Any]) -> None:
        """Keep what ``event`` (a runtime stdout event of type ``kind``) says about checkpoints."""
        if kind == "checkpoint":
            keys = ("step", "level", "path", "bytes", "seconds", "completedAt", "plugin")
            self.checkpoints.append({k: event[k] for k in keys if k in event})
        elif kind == "checkpointFailed":
            record = {k: event[k] for k in ("step", "level", "plugin") if k in event}
            record["error"] = str(event.get("error") or "")[:500]
            record["skipped"] = bool(event.get("skipped"))
            record["completedAt"] = event.get("completedAt") or round(time.time(), 3)  # when it was seen
            self.checkpoints.append(record)
        elif kind == "checkpointRejected":
            self.rejected.append({"path": event.get("path"), "reason": str(event.get("reason") or "")[:500]})
        elif kind == "restored":
            keys = ("step", "level", "path", "seconds", "plugin")
            self.restored_from = {k: event[k] for k in keys if k in event}
            self.restored_from["restoredAt"] = round(time.time(), 3)  # tells one restore from the next
        elif kind == "started" and "resumedFrom" in event and not event["resumedFrom"]:
            self.restored_from = None  # this run starts afresh: an earlier run's restore no longer holds
        elif kind == "progress" and isinstance(event.get("stepMs"), int | float) and "step" in event:
            self.step_times.append([event["step"], round(float(event["stepMs"]), 3)])

    def to_status(self) -> dict[str, Any]:
        """The Workload status fields (only those with something to say)."""
        status: dict[str, Any] = {}
        if self.checkpoints:
            status["checkpoints"] = list(self.checkpoints)
        if self.restored_from is not None:
            status["restoredFrom"] = dict(self.restored_from)
        if self.rejected:
            status["rejectedCheckpoints"] = list(self.rejected)
        if self.step_times:
            status["stepTimes"] = [list(pair) for pair in self.step_times]
        return status


@dataclass
class Managed:
    """What the supervisor knows of one Workload's process."""

    name: str
    document: dict[str, Any]
    log_path: Path
    process: subprocess.Popen | None = None
    port: int | None = None
    restarts: int = 0
    next_start: float = 0.0
    phase: str = "Pending"  # Pending | Starting | Running | Succeeded | Failed | BackOff | Stopped
    ready: bool = False
    endpoint: str | None = None
    last_exit: int | None = None
    message: str = ""
    progress: dict[str, Any] = field(default_factory=dict)
    tail: deque = field(default_factory=lambda: deque(maxlen=LOG_TAIL_LINES))
    read_offset: int = 0
    shipped_offset: int = 0
    started_at: float = 0.0
    # A digest of the node token a router was started with (not the token), to see it change.
    credential: str | None = None
    history: TrainingHistory = field(default_factory=TrainingHistory)

    @property
    def generation(self) -> int:
        return int(self.document["metadata"].get("generation", 1))

    @property
    def runtime(self) -> str:
        return self.document["spec"].get("runtime", "serve")


class Supervisor:
    def __init__(
        self,
        state_dir: Path,
        advertise_host: str = "127.0.0.1",
        use_gpus: bool = True,
        python: str = sys.executable,
        simulate_workloads: bool = False,
        node_name: str = "",
        control_plane: Callable[[], tuple[str, str] | None] | None = None,
    ):
        self.state_dir = state_dir
        self.logs_dir = state_dir / "logs"
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.advertise_host = advertise_host
        self.use_gpus = use_gpus
        self.python = python
        self.workloads: dict[str, Managed] = {}
        self.accepting = True
        # Simulated Workloads run no process: they report Running at once, so one
        # machine can host many simulated agents for scale tests.
        self.simulate_workloads = simulate_workloads
        # The control plane's URL and this node's current token, once registered: a router
        # Workload watches its own Workload with them.
        self.node_name = node_name
        self.control_plane = control_plane

    # --- desired state -----------------------------------------------------------

    def sync(self, desired: dict[str, dict[str, Any]]) -> None:
        """Make the running set match the Workloads bound to this node.

        Workloads with ``spec.executor: kubernetes`` run as Pods that the control plane
        makes (controlplane/kube/pods.py): this agent starts nothing for them."""
        desired = {name: doc for name, doc in desired.items() if runs_here(doc)}
        for name in list(self.workloads):
            if name not in desired:
                self.stop(name)
                del self.workloads[name]
        if not self.accepting:
            return
        for name, document in desired.items():
            current = self.workloads.get(name)
            if current is not None and document["metadata"].get("generation") != current.generation:
                self.stop(name)  # the spec changed: run the new one
                current = None
            if current is None:
                managed = Managed(name, document, self.logs_dir / f"{name}.log")
                # A restarted agent appends to the same file: what is there was shipped before.
                if managed.log_path.exists():
                    managed.read_offset = managed.shipped_offset = managed.log_path.stat().st_size
                self.workloads[name] = managed
            else:
                current.document = document

    # --- processes ---------------------------------------------------------------

    def command(self, managed: Managed, config_path: Path) -> list[str]:
        runtime = managed.runtime
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {runtime!r}; this agent runs {', '.join(sorted(RUNTIMES))}")
        argv = [self.python, "-m", f"agents.runtimes.{runtime}", "--config", str(config_path)]
        if runtime != "route":  # a router runs no model
            device = "auto" if self.use_gpus and managed.document["spec"].get("gpus") else "cpu"
            argv += ["--device", device]
        if runtime in HTTP_RUNTIMES:
            managed.port = free_port()
            argv += ["--host", "0.0.0.0" if self.advertise_host != "127.0.0.1" else "127.0.0.1"]  # noqa: S104
            argv += ["--port", str(managed.port)]
        return argv

    def env_for(self, managed: Managed) -> dict[str, str] | None:
        """What a runtime needs in its environment beyond the agent's own; None while a
        router cannot start yet (the agent has no node token before it registers)."""
        if managed.runtime == "train":
            return self.checkpoint_env(managed)
        if managed.runtime != "route":
            return {}
        found = self.control_plane() if self.control_plane is not None else None
        if found is None:
            return None
        url, token = found
        return {
            "FLOTILLA_URL": url,
            "FLOTILLA_TOKEN": token,
            "FLOTILLA_NODE": self.node_name,
            "FLOTILLA_WORKLOAD": managed.name,
        }

    def checkpoint_env(self, managed: Managed) -> dict[str, str]:
        """Where a training Workload keeps its checkpoints on this node: a directory named after
        its owner and the owner's uid, so a restarted Workload of the same job finds them and a
        new job of the same name does not."""
        owner = managed.document["spec"].get("owner") or {}
        name = str(owner.get("name") or managed.name)
        uid = str(owner.get("uid") or "")[:8]
        job = f"{name}-{uid}" if uid else name
        return {
            "FLOTILLA_CHECKPOINT_DIR": str(self.state_dir / "checkpoints" / job),
            "FLOTILLA_CHECKPOINT_OWNER": f"{owner.get('kind', 'TrainingJob')}/{name}",
        }

    def _credential(self) -> str | None:
        found = self.control_plane() if self.control_plane is not None else None
        return hashlib.sha256(found[1].encode()).hexdigest() if found else None

    def start(self, managed: Managed) -> None:
        extra = self.env_for(managed)
        if extra is None:
            managed.message = "waiting for the agent to register: a router needs the node's token"
            return
        config_path = self.state_dir / f"{managed.name}.json"
        config_path.write_text(json.dumps(managed.document["spec"].get("config", {})))
        try:
            argv = self.command(managed, config_path)
        except ValueError as exc:
            managed.phase, managed.message = "Failed", str(exc)
            return
        env = {**os.environ, **extra}
        managed.credential = self._credential() if managed.runtime == "route" else None
        gpus = managed.document["spec"].get("gpus", [])
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus)) if self.use_gpus else ""
        env["PYTHONUNBUFFERED"] = "1"
        output = open(managed.log_path, "ab")  # noqa: SIM115 - handed to the child
        managed.read_offset = managed.log_path.stat().st_size
        managed.process = subprocess.Popen(
            argv,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
        )
        output.close()
        managed.phase, managed.ready, managed.endpoint = "Starting", False, None
        managed.started_at = time.monotonic()
        managed.message = f"started pid {managed.process.pid}"
        log.info("workload %s: started %s (pid %d)", managed.name, managed.runtime, managed.process.pid)

    def stop(self, name: str, grace: float = 10.0) -> None:
        managed = self.workloads.get(name)
        if managed is None or managed.process is None or managed.process.poll() is not None:
            return
        log.info("workload %s: stopping pid %d", name, managed.process.pid)
        managed.process.terminate()
        try:
            managed.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(managed.process.pid, signal.SIGKILL)
            managed.process.wait()

    def stop_all(self, grace: float) -> None:
        """Drain: ask every Workload to stop, then kill what is left after the grace period."""
        self.accepting = False
        running = [m for m in self.workloads.values() if m.process and m.process.poll() is None]
        for managed in running:
            managed.process.terminate()
        deadline = time.monotonic() + grace
        for managed in running:
            try:
                managed.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(managed.process.pid, signal.SIGKILL)
                managed.process.wait()
            self._read_events(managed)
            managed.last_exit = managed.process.returncode
            managed.process, managed.ready, managed.endpoint = None, False, None
            managed.phase, managed.message = "Stopped", "stopped: the agent is draining"

    # --- the periodic pass ---------------------------------------------------------

    def tick(self) -> None:
        now = time.monotonic()
        for managed in self.workloads.values():
            self._read_events(managed)
            process = managed.process
            if self.simulate_workloads:
                if managed.phase == "Pending" and self.accepting:
                    managed.phase, managed.ready, managed.message = "Running", True, "simulated workload"
                continue
            if process is None:
                if managed.phase in ("Pending", "BackOff") and now >= managed.next_start and self.accepting:
                    self.start(managed)
                continue
            code = process.poll()
            if code is None:
                if managed.runtime in HTTP_RUNTIMES and not managed.ready:
                    self._check_health(managed)
                if managed.credential is not None and managed.credential != self._credential():
                    self._restart_with_new_token(managed, now)
                continue
            self._exited(managed, code, now)

    def _restart_with_new_token(self, managed: Managed, now: float) -> None:
        """The agent registered again, which revoked the token the router holds: start it
        afresh with the new one (not a crash: no restart counted, no backoff)."""
        log.info("workload %s: the node token changed; restarting the router with the new one", managed.name)
        self.stop(managed.name)
        managed.process, managed.ready, managed.endpoint = None, False, None
        managed.phase, managed.next_start = "Pending", now
        managed.message = "restarting: the node token changed"

    def _exited(self, managed: Managed, code: int, now: float) -> None:
        managed.process = None
        managed.ready = False
        managed.endpoint = None
        managed.last_exit = code
        self._read_events(managed)
        if code == 0 and managed.runtime == "train":
            managed.phase, managed.message = "Succeeded", "training reached its last step"
            return
        managed.restarts += 1
        delay = min(MAX_BACKOFF, 2.0 ** min(managed.restarts, 6)) * random.uniform(0.5, 1.0)
        managed.phase = "BackOff"
        managed.next_start = now + delay
        last = " | ".join(list(managed.tail)[-5:])
        managed.message = (
            f"exited with code {code}; restart {managed.restarts} in {delay:.0f}s; last log: {last}"
        )
        log.warning("workload %s: %s", managed.name, managed.message)

    def _check_health(self, managed: Managed) -> None:
        url = f"http://127.0.0.1:{managed.port}"
        try:
            healthy = httpx.get(f"{url}/health", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            healthy = False
        if healthy:
            managed.ready = True
            managed.phase = "Running"
            managed.endpoint = f"http://{self.advertise_host}:{managed.port}"
            managed.message = f"serving at {managed.endpoint}"

    def _read_events(self, managed: Managed) -> None:
        """Follow the log: keep a tail, and act on the runtime's JSON event lines."""
        try:
            with open(managed.log_path, "rb") as handle:
                handle.seek(managed.read_offset)
                chunk = handle.read(1 << 20)
        except FileNotFoundError:
            return
        cut = chunk.rfind(b"\n") + 1
        managed.read_offset += cut
        for raw in chunk[:cut].splitlines():
            line = raw.decode("utf-8", errors="replace").rstrip()
            managed.tail.append(line[:500])
            if not line.startswith('{"event"'):
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            kind = event.get("event")
            managed.history.observe(kind, event)
            if kind in ("started", "progress"):
                managed.phase = "Running"
                managed.ready = True
                managed.progress = {k: v for k, v in event.items() if k != "event"}
            elif kind in ("succeeded", "failed", "stopped"):
                managed.progress.update({k: v for k, v in event.items() if k != "event"})
                if kind == "failed":
                    managed.message = str(event.get("message", ""))[:500]

    def new_log_text(self, managed: Managed, limit: int = 64 * 1024) -> str:
        """Log text not yet shipped to the control plane (at most ``limit`` bytes)."""
        try:
            with open(managed.log_path, "rb") as handle:
                handle.seek(managed.shipped_offset)
                chunk = handle.read(limit)
        except FileNotFoundError:
            return ""
        cut = chunk.rfind(b"\n") + 1 if len(chunk) == limit else len(chunk)
        return chunk[:cut].decode("utf-8", errors="replace")

    def mark_shipped(self, managed: Managed, text: str) -> None:
        managed.shipped_offset += len(text.encode("utf-8", errors="replace"))

    def status_of(self, managed: Managed) -> dict[str, Any]:
        ready = managed.ready and managed.phase == "Running"
        if managed.phase == "Succeeded":
            reason = "Completed"
        elif ready:
            reason = "Serving" if managed.runtime in HTTP_RUNTIMES else "Training"
        else:
            reasons = {"BackOff": "CrashLoopBackOff", "Failed": "Failed", "Stopped": "Stopped"}
            reason = reasons.get(managed.phase, "Starting")
        status: dict[str, Any] = {
            "phase": managed.phase,
            "observedGeneration": managed.generation,
            "restarts": managed.restarts,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "reason": reason,
                    "message": managed.message,
                }
            ],
        }
        if managed.endpoint:
            status["endpoint"] = managed.endpoint
        if managed.last_exit is not None:
            status["lastExitCode"] = managed.last_exit
            status["lastLog"] = list(managed.tail)[-LOG_TAIL_LINES:]
        if managed.progress:
            status["progress"] = managed.progress
        status.update(managed.history.to_status())
        return status
