"""The router when replicas come and go, all real processes: ``python -m agents.runtimes.serve``
replicas, one SIGKILLed in the middle of a stream; and the router's watch mode against a real
control plane (web server, worker, beat and a simulated agent from tests/e2e.py), its own
Workload's ``status.backends`` written through the API as the owner controller writes it.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import deployment
from tests.e2e import condition, running_stack, wait_for
from tests.runtime_process import RuntimeProcess
from tests.test_serve_server import Served

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
MODEL = {"source": "builtin:tiny-llama", "config": {"layers": 2, "hidden": 64, "intermediate": 128}}
# Greedy on this prompt runs to max_tokens without an EOS: the stream is long.
LONG = {"prompt": "Once upon a time", "max_tokens": 480, "temperature": 0, "stream": True}


class RouterProcess(RuntimeProcess):
    """``python -m agents.runtimes.route``, waited on until it prints its ready line."""

    def __init__(self, tmp: Path, backends: list[str], env: dict[str, str] | None = None):
        environ = {k: v for k, v in os.environ.items() if not k.startswith("FLOTILLA_")}
        args = [arg for url in backends for arg in ("--backend", url)]
        config = {"model": MODEL, "name": "tiny"}
        super().__init__("route", tmp, config, args=args, env={**environ, **(env or {})}, client_timeout=60)

    def stats(self) -> dict[str, Any]:
        return self.client.get("/stats").json()

    def replicas(self) -> dict[str, dict[str, Any]]:
        return {r["name"]: r for r in self.stats()["replicas"]}

    def complete(self, prompt: str = "Hello") -> httpx.Response:
        return self.client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 4})


@pytest.fixture
def two_replicas(tmp_path) -> Iterator[list[Served]]:
    replicas: list[Served] = []
    starting = [
        threading.Thread(target=lambda i=i: replicas.append(Served(tmp_path / f"r{i}"))) for i in (0, 1)
    ]
    for i, thread in enumerate(starting):
        (tmp_path / f"r{i}").mkdir()
        thread.start()
    for thread in starting:
        thread.join()
    assert len(replicas) == 2
    yield replicas
    for replica in replicas:
        replica.stop()


def test_a_replica_killed_mid_stream_ends_that_stream_with_an_error_and_the_other_serves_on(
    two_replicas, tmp_path
):
    router = RouterProcess(tmp_path, [r.url for r in two_replicas])
    by_url = {r.url: r for r in two_replicas}
    try:
        wait_for(lambda: router.stats()["replicasReady"] == 2, what="both replicas ready")
        with router.client.stream("POST", "/v1/completions", json=LONG) as response:
            assert response.headers["content-type"] == "text/event-stream"
            lines = (line for line in response.iter_lines() if line.startswith("data: "))
            first = [next(lines) for _ in range(3)]
            (victim,) = [name for name, r in router.replicas().items() if r["inFlight"] == 1]
            by_url[victim].proc.send_signal(signal.SIGKILL)
            rest = list(lines)
        assert all("choices" in json.loads(line.removeprefix("data: ")) for line in first)
        assert rest[-1] == "data: [DONE]"
        error = json.loads(rest[-2].removeprefix("data: "))["error"]
        assert error["type"] == "server_error" and "failed" in error["message"]
        assert all("choices" in json.loads(line.removeprefix("data: ")) for line in rest[:-2])

        (survivor,) = set(by_url) - {victim}
        before = router.replicas()[survivor]["requestsTotal"]
        for i in range(4):
            assert router.complete(f"after the crash {i}").status_code == 200
        replicas = router.replicas()
        assert replicas[survivor]["requestsTotal"] == before + 4
        down = replicas[victim]
        assert down["state"] == "down" and down["failures"] >= 1
        assert down["requests"] == {"stream_error": 1} and down["lastError"]
        metrics = router.client.get("/metrics").text
        assert f'flotilla_router_requests_total{{replica="{victim}",outcome="stream_error"}} 1' in metrics
        assert "flotilla_router_replicas_ready 1" in metrics
    finally:
        assert router.stop() == 0


# --- watch mode against the real control plane ---------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("router-stack")) as running:
        running.start_agent("edge", "1xL4")  # simulated Workloads: Running at once, no process
        wait_for(lambda: running.node_ready("edge"), what="agent registered")
        yield running


def put_backends(live, name: str, backends: list[dict[str, str]]) -> None:
    """Write ``status.backends`` as the owner controller does, keeping what the agent reported."""
    status = live.client.get("workloads", name)["status"]
    live.client.request(
        "PUT", f"/api/v1/workloads/{name}/status", json={"status": {**status, "backends": backends}}
    )


def test_in_watch_mode_the_router_follows_its_workloads_backends_on_the_control_plane(
    live, two_replicas, tmp_path
):
    doc = deployment("routed", replicas=1)
    doc["spec"]["model"] = MODEL
    live.client.apply(yaml.safe_dump(doc))

    def running_workload() -> dict[str, Any] | None:
        items = live.client.list("workloads", labelSelector="flotilla.dev/owner=routed")["items"]
        serving = [w for w in items if w["spec"]["role"] == "serve" and w["spec"]["nodeName"] == "edge"]
        ok = serving and condition(serving[0], "Ready") == "True"
        return serving[0] if ok else None

    # A serving Workload on the router's node stands in for the router's own one: a node
    # token reads every Workload bound to its node, and the API takes any status.
    name = wait_for(running_workload, timeout=60, what="a Running Workload on edge")["metadata"]["name"]
    token = (live.stack.home / "agent" / "edge" / "node-token").read_text().strip()
    env = {"FLOTILLA_URL": live.stack.url, "FLOTILLA_TOKEN": token, "FLOTILLA_NODE": "edge",
           "FLOTILLA_WORKLOAD": name}  # fmt: skip
    router = RouterProcess(tmp_path, [], env=env)
    a, b = (r.url for r in two_replicas)
    try:
        wait_for(lambda: router.stats()["source"]["connected"], what="the router's watch connected")
        assert router.stats()["replicas"] == [] and router.complete().status_code == 503

        put_backends(live, name, [{"name": "replica-a", "url": a}])
        wait_for(
            lambda: router.replicas().get("replica-a", {}).get("state") == "ready", what="replica-a ready"
        )
        assert router.complete().status_code == 200

        put_backends(live, name, [{"name": "replica-a", "url": a}, {"name": "replica-b", "url": b}])
        wait_for(lambda: router.stats()["replicasReady"] == 2, what="both replicas ready")

        put_backends(live, name, [{"name": "replica-b", "url": b}])
        wait_for(lambda: list(router.replicas()) == ["replica-b"], what="replica-a to leave the set")
        before = router.replicas()["replica-b"]["requestsTotal"]
        for _ in range(2):
            assert router.complete().status_code == 200
        assert router.replicas()["replica-b"]["requestsTotal"] == before + 2

        # The control plane goes away: the router keeps routing, then resumes its watch.
        live.stack.kill("web", signal.SIGTERM)
        assert router.complete().status_code == 200
        wait_for(lambda: not router.stats()["source"]["connected"], timeout=60, what="the watch to fail")
        live.stack.start_web()
        live.stack.wait_ready()
        put_backends(live, name, [{"name": "replica-a", "url": a}])
        wait_for(lambda: list(router.replicas()) == ["replica-a"], timeout=90, what="the watch to resume")
        assert router.stats()["source"]["connected"]
        assert token not in "".join(router.stderr)
    finally:
        assert router.stop() == 0
