"""The processes one configuration of ``flotilla bench cache`` runs on: serving replicas and a
router in front of them, started as the agent starts them and stopped afterwards.

Each replica is ``python -m agents.runtimes.serve`` and the router
``python -m agents.runtimes.route --backend URL ...``, each waited for until it prints its
``{"event": "ready"}`` line. Replicas run with ONE torch thread each (``OMP_NUM_THREADS=1``
and ``MKL_NUM_THREADS=1`` in their environment): on a small CPU host several replicas share
the cores, and one thread each keeps them from fighting over them (a replica with a thread
per core would slow every other one down) and makes a replica's step times the ones the
profile measures with one thread. Standard library only: the bench's process never loads a
model to start these.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from common.ports import free_port

READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 10.0
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class FleetError(RuntimeError):
    """A replica or the router did not come up; the message says which and ends with its log."""


def get_json(url: str, path: str, timeout: float = 10.0) -> Any:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise OSError(f"GET {url}{path}: HTTP {response.status}: {body[:200]!r}")
        return json.loads(body)
    finally:
        connection.close()


def post_json(url: str, path: str, body: dict[str, Any], timeout: float = 120.0) -> Any:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        connection.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise OSError(f"POST {url}{path}: HTTP {response.status}: {data[:200]!r}")
        return json.loads(data)
    finally:
        connection.close()


@dataclass
class Process:
    """One started runtime: its process, its URL once ready, and where its stderr goes."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]
    url: str = ""

    def tail(self, lines: int = 15) -> str:
        if not self.log.closed:
            self.log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


def _start(name: str, argv: list[str], env: dict[str, str], workdir: Path) -> Process:
    log_path = workdir / f"{name}.log"
    log = log_path.open("wb")
    popen = subprocess.Popen(
        [sys.executable, *argv], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env
    )
    return Process(name, popen, log_path, log)


def _await_ready(process: Process, deadline: float) -> None:
    """Read the process's stdout until its ready line (the runtimes print nothing else there)."""
    assert process.popen.stdout is not None
    while time.monotonic() < deadline:
        line = process.popen.stdout.readline()
        if not line:
            break
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict) and event.get("event") == "ready":
            process.url = str(event["url"])
            return
    code = process.popen.poll()
    status = f"exited with {code}" if code is not None else "did not print its ready line in time"
    raise FleetError(f"{process.name} {status}; the end of its log:\n{process.tail()}")


def _stop(processes: list[Process]) -> None:
    """SIGTERM them all at once (each drains on its own), then wait; kill what outstays."""
    for process in processes:
        if process.popen.poll() is None:
            process.popen.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.popen.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.popen.kill()
            process.popen.wait(STOP_TIMEOUT_S)
        if process.popen.stdout is not None:
            process.popen.stdout.close()
        process.log.close()


@dataclass
class Fleet:
    """A running configuration: the router's URL and each replica's."""

    router: str
    replicas: list[str]

    def replica_stats(self) -> list[dict[str, Any]]:
        return [get_json(url, "/stats") for url in self.replicas]


@contextlib.contextmanager
def fleet(
    replicas: int,
    model: dict[str, Any],
    cache: dict[str, Any],
    kv_blocks: int,
    max_batch: int,
    device: str,
    name: str = "bench-cache",
) -> Iterator[Fleet]:
    """Start ``replicas`` serving replicas of ``model`` with the cache plugin ``cache`` and a
    router in front of them choosing with the same plugin; stop them all on exit."""
    started: list[Process] = []
    with tempfile.TemporaryDirectory(prefix="flotilla-bench-cache-") as tmp:
        workdir = Path(tmp)
        replica_config = {"model": model, "cache": cache, "kvCacheBlocks": kv_blocks, "maxBatch": max_batch,
                          "name": name}  # fmt: skip
        (workdir / "replica.json").write_text(json.dumps(replica_config))
        (workdir / "router.json").write_text(json.dumps({"model": model, "name": name, "cache": cache}))
        env = {**os.environ, **ONE_THREAD}
        try:
            urls = []
            for i in range(replicas):
                port = free_port()
                urls.append(f"http://127.0.0.1:{port}")
                argv = ["-m", "agents.runtimes.serve", "--config", str(workdir / "replica.json"),
                        "--host", "127.0.0.1", "--port", str(port), "--device", device,
                        "--log-level", "WARNING"]  # fmt: skip
                started.append(_start(f"replica-{i}", argv, env, workdir))
            # the router starts beside them: it finds them ready by polling, as it would in a fleet
            argv = ["-m", "agents.runtimes.route", "--config", str(workdir / "router.json"),
                    "--host", "127.0.0.1", "--port", str(free_port()), "--log-level", "WARNING"]  # fmt: skip
            for url in urls:
                argv += ["--backend", url]
            router = _start("router", argv, env, workdir)
            started.append(router)
            deadline = time.monotonic() + READY_TIMEOUT_S
            for process in started:
                _await_ready(process, deadline)
            _await_replicas(router, replicas, deadline)
            yield Fleet(router.url, [process.url for process in started[:-1]])
        finally:
            _stop(started)


def _await_replicas(router: Process, count: int, deadline: float) -> None:
    """Until the router has found every replica ready (it polls them itself)."""
    while time.monotonic() < deadline:
        try:
            if get_json(router.url, "/stats").get("replicasReady", 0) >= count:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise FleetError(f"the router did not see {count} ready replicas in time; its log:\n{router.tail()}")
