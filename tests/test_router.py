"""The cache-aware router over real HTTP: in-process serving replicas with tiny engines, the
router in front of them (in process, and once as ``python -m agents.runtimes.route``), and
the official ``openai`` client as the caller."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from agents.runtimes import plugin_choice
from agents.runtimes.model import build_model
from agents.runtimes.route.config import parse_config
from agents.runtimes.route.proxy import Router, RouterHTTPServer
from agents.runtimes.route.replicas import ReplicaSet
from agents.runtimes.route.source import StaticSource
from agents.runtimes.serve.engine import Engine
from agents.runtimes.serve.server import ServingHTTPServer
from agents.runtimes.tokenizer import ByteTokenizer
from agents.supervisor import Managed, Supervisor
from common import apikeys
from common.ports import free_port
from tests.e2e import wait_for

ROOT = Path(__file__).resolve().parents[1]
TINY = {"layers": 2, "hidden": 64, "heads": 2, "kvHeads": 1, "intermediate": 128, "maxSeqLen": 256}
MODEL = {"source": "builtin:tiny-llama", "config": TINY}
KEY = "router-test-key-0123456789"
# One long shared prefix (ten 16-token blocks) and another that differs from its first byte.
PREFIX_A = "You are a careful assistant for the fleet. " * 4
PREFIX_B = "Summarise the following GPU telemetry log. " * 4


class Replica:
    """A serving replica in this process: a real engine behind the real HTTP server."""

    def __init__(self, *, started: bool = True, cache: str | None = None, api_keys: list[str] | None = None):
        model, _ = build_model(MODEL, "cpu")
        choice = plugin_choice.resolve("cache", {"plugin": cache}, "cache") if cache else None
        self.engine = Engine(model, kv_blocks=96, max_batch=8, cache=choice, model_key=MODEL["source"])
        self.server = ServingHTTPServer(
            ("127.0.0.1", 0), self.engine, "tiny", cache=choice, api_keys=api_keys
        )
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        if started:
            self.engine.start()
        self.url = self.server.url

    def close(self) -> None:
        if self.engine._thread is None:
            self.engine.start()
        self.engine.stop(drain_s=0.5)
        self.server.shutdown()
        self.server.server_close()


class RunningRouter:
    """A router in this process, serving on a free port until ``close``."""

    def __init__(self, backends: list[str], poll_seconds: float = 0.5, **config: Any):
        self.config = parse_config({"model": MODEL, "name": "tiny", **config}, "test config")
        self.replicas = ReplicaSet(self.config.block_size, self.config.source, poll_seconds=poll_seconds)
        self.stop = threading.Event()
        source = StaticSource(backends)
        source.start(self.replicas, self.stop)
        self.replicas.poll_once()
        self.router = Router(self.config, ByteTokenizer(), self.replicas, source)
        self.server = RouterHTTPServer(("127.0.0.1", 0), self.router)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        threading.Thread(target=self.replicas.run, args=(self.stop,), daemon=True).start()
        self.url = self.server.url
        self.http = httpx.Client(base_url=self.url, timeout=60)

    def stats(self) -> dict[str, Any]:
        return self.http.get("/stats").json()

    def served(self) -> dict[str, int]:
        return {r["name"]: r["requestsTotal"] for r in self.stats()["replicas"]}

    def served_by(self, send: Callable[[], Any]) -> str:
        """The replica that served the request ``send`` makes."""
        before = self.served()
        send()
        after = self.served()
        (name,) = [n for n in after if after[n] != before.get(n, 0)]
        return name

    def complete(self, prompt: str, **extra: Any) -> httpx.Response:
        return self.http.post("/v1/completions", json={"prompt": prompt, "max_tokens": 2, **extra})

    def close(self) -> None:
        self.stop.set()
        self.replicas.wake()
        self.http.close()
        self.server.shutdown()
        self.server.server_close()
        self.replicas.close()


@contextmanager
def running_router(backends: list[str], **config: Any) -> Iterator[RunningRouter]:
    router = RunningRouter(backends, **config)
    try:
        yield router
    finally:
        router.close()


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Replica, Replica]]:
    replicas = (Replica(), Replica())
    yield replicas
    for replica in replicas:
        replica.close()


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param
    return error


# --- routing ------------------------------------------------------------------------------


def test_round_robin_sends_each_request_to_the_next_replica(pair):
    with running_router([r.url for r in pair]) as router:  # no cache section: round-robin
        assert router.stats()["routing"]["plugin"] == "round-robin"
        order = [
            router.served_by(lambda: router.complete("same prompt").raise_for_status()) for _ in range(4)
        ]
    assert order[0] != order[1] and order[0::2] == [order[0]] * 2 and order[1::2] == [order[1]] * 2


def test_prefix_aware_sends_a_request_back_to_the_replica_holding_its_long_prefix(pair):
    with running_router([r.url for r in pair], cache={"plugin": "prefix-aware"}) as router:
        first_a = router.served_by(lambda: router.complete(PREFIX_A + "Question one?").raise_for_status())
        first_b = router.served_by(lambda: router.complete(PREFIX_B + "Log one.").raise_for_status())
        assert first_a != first_b  # no shared prefix yet: the least loaded, in turn
        for turn in ("two", "three"):
            again_a = router.served_by(lambda t=turn: router.complete(PREFIX_A + f"Question {t}?"))
            again_b = router.served_by(lambda t=turn: router.complete(PREFIX_B + f"Log {t}."))
            assert (again_a, again_b) == (first_a, first_b)


def test_the_router_hashes_a_prompt_into_the_very_blocks_the_replica_caches():
    replica = Replica(cache="prefix-lru")
    try:
        with running_router([replica.url], cache={"plugin": "prefix-aware"}) as router:
            router.complete(PREFIX_A + "Which blocks?").raise_for_status()
            expected = router.router.route_request(PREFIX_A + "Which blocks?", None).block_hashes
            listed = httpx.get(f"{replica.url}/cache").json()
            assert len(expected) >= 10 and set(expected) <= set(listed["hashes"])
            wait_for(
                lambda: router.stats()["replicas"][0]["reportedBlocks"] >= len(expected),
                what="the router to read the replica's /cache",
            )
    finally:
        replica.close()


def test_least_loaded_prefers_the_replica_with_fewer_requests_in_flight():
    busy, idle = Replica(started=False), Replica()  # busy's engine never steps: its requests wait
    held: list[threading.Thread] = []
    try:
        with running_router([busy.url, idle.url], cache={"plugin": "least-loaded"}) as router:

            def in_flight() -> dict[str, int]:
                return {r["name"]: r["inFlight"] for r in router.stats()["replicas"]}

            while in_flight()[busy.url] == 0:  # ties go in turn: at most two tries
                thread = threading.Thread(target=router.complete, args=("hold me",), daemon=True)
                thread.start()
                held.append(thread)
                wait_for(lambda t=thread: not t.is_alive() or in_flight()[busy.url] >= 1)
            order = [router.served_by(lambda: router.complete("quick").raise_for_status()) for _ in range(4)]
            assert order == [idle.url] * 4
            busy.engine.start()
            for thread in held:
                thread.join(timeout=30)
            assert in_flight() == {busy.url: 0, idle.url: 0}
    finally:
        busy.close()
        idle.close()


# --- the OpenAI surface ---------------------------------------------------------------------


def test_the_openai_client_gets_a_completion_a_chat_and_a_streamed_chat_through_the_router():
    digest = apikeys.digest(KEY)
    replicas = [Replica(api_keys=[digest]), Replica(api_keys=[digest])]
    try:
        with running_router([r.url for r in replicas], apiKeys=[digest]) as router:
            client = openai.OpenAI(base_url=router.url + "/v1", api_key=KEY, max_retries=0)
            assert [m.id for m in client.models.list()] == ["tiny"]
            completion = client.completions.create(model="tiny", prompt="Hello, fleet", max_tokens=4)
            assert completion.object == "text_completion" and completion.usage.completion_tokens >= 1
            messages = [{"role": "user", "content": "hi"}]
            chat = client.chat.completions.create(model="tiny", messages=messages, max_tokens=4)
            assert chat.choices[0].message.role == "assistant"
            stream = client.chat.completions.create(
                model="tiny", messages=messages, max_tokens=6, stream=True
            )
            chunks = list(stream)
            assert chunks[0].choices[0].delta.role == "assistant"
            assert chunks[-1].choices[0].finish_reason in ("length", "stop")
            assert isinstance("".join(c.choices[0].delta.content or "" for c in chunks), str)
            # The key reached the replicas, which check it too: both answered.
            assert sorted(router.served().values()) == [1, 2]
    finally:
        for replica in replicas:
            replica.close()


def test_with_api_keys_set_a_request_without_the_right_key_is_a_401(pair):
    with running_router([r.url for r in pair], apiKeys=[apikeys.digest(KEY)]) as router:
        body = {"prompt": "let me in", "max_tokens": 2}
        error = assert_openai_error(router.http.post("/v1/completions", json=body), 401, "Authorization")
        assert error["type"] == "authentication_error"
        wrong = {"Authorization": "Bearer not-the-key-at-all-000"}
        assert_openai_error(router.http.post("/v1/completions", json=body, headers=wrong), 401)
        assert_openai_error(router.http.get("/v1/models"), 401)
        right = {"Authorization": f"Bearer {KEY}"}
        assert router.http.post("/v1/completions", json=body, headers=right).status_code == 200
        assert router.http.get("/health").status_code == 200  # probes need no key
        assert router.stats()["rejected"] == {"401": 3}


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/v1/completions", b"{not json", 400, None),
        ("/v1/completions", b"[1, 2]", 400, None),
        ("/v1/completions", json.dumps({"prompt": ""}).encode(), 400, "prompt"),
        ("/v1/chat/completions", json.dumps({"messages": [{"role": "robot", "content": "x"}]}).encode(), 400,
         "messages[0]"),
        ("/v1/completions", json.dumps({"prompt": "x", "user": 7}).encode(), 400, "user"),
        ("/v1/embeddings", b"{}", 404, None),
    ],
)  # fmt: skip
def test_a_malformed_request_is_a_4xx_in_the_openai_error_shape(pair, path, body, status, param):
    with running_router([pair[0].url]) as router:
        response = router.http.post(path, content=body, headers={"Content-Type": "application/json"})
        assert_openai_error(response, status, param)


def test_a_body_without_a_length_or_too_large_is_refused_without_a_500(pair):
    with running_router([pair[0].url]) as router:
        host, port = router.server.server_address[:2]
        connection = http.client.HTTPConnection(host, port, timeout=10)
        connection.putrequest("POST", "/v1/completions")
        connection.putheader("Content-Type", "application/json")
        connection.endheaders()
        answer = connection.getresponse()
        assert answer.status == 411 and json.loads(answer.read())["error"]["message"]
        connection.close()
        huge = router.http.post("/v1/completions", content=b"x" * ((1 << 20) + 1))
        assert_openai_error(huge, 413)
        # The replica's own 4xx passes through unchanged.
        too_long = router.complete("x", max_tokens=10_000)
        assert_openai_error(too_long, 400, "max_tokens")


def test_with_no_ready_replica_a_request_is_a_503_and_health_says_so():
    with running_router([f"http://127.0.0.1:{free_port()}"]) as router:
        assert_openai_error(router.complete("anyone?"), 503)
        assert router.http.get("/health").json()["replicasReady"] == 0
        assert router.stats()["replicas"][0]["state"] == "down"


def test_a_replica_answering_5xx_is_marked_down_and_the_request_retried_on_another(pair):
    closing = Replica()
    with running_router([closing.url, pair[0].url], poll_seconds=30) as router:
        closing.engine.stop(drain_s=0)  # it still answers HTTP, with 503 "shutting down"
        for _ in range(3):
            assert router.complete("retry me").status_code == 200
        stats = router.stats()
        (down,) = [r for r in stats["replicas"] if r["name"] == closing.url]
        assert down["failures"] >= 1 and down["requests"].get("failed", 0) >= 1 and stats["retries"] >= 1
        assert "503" in down["lastError"]
        metrics = router.http.get("/metrics").text
        assert f'flotilla_router_requests_total{{replica="{pair[0].url}",outcome="ok"}} 3' in metrics
        assert "flotilla_router_retries_total " in metrics and "flotilla_router_replicas_ready " in metrics
    closing.server.shutdown()
    closing.server.server_close()


def test_a_restarted_replica_loses_the_routers_record_of_its_blocks(pair):
    with running_router([pair[0].url], cache={"plugin": "prefix-aware"}, poll_seconds=30) as router:
        router.complete(PREFIX_A + "remember me").raise_for_status()
        replica = router.replicas._replicas[pair[0].url]
        assert len(replica.routed) >= 10
        replica.uptime = 10**9  # as if it had been up longer than it reports now
        router.replicas.poll_once()
        assert len(replica.routed) == 0


# --- configuration and the command line -----------------------------------------------------


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"model": MODEL, "colour": "blue"}, "colour"),
        ({"model": "tiny"}, "model"),
        ({"model": MODEL, "blockSize": 0}, "blockSize"),
        ({"model": MODEL, "apiKeys": ["a-plain-key-not-a-digest"]}, "apiKeys"),
        ({"model": MODEL, "cache": {"plugin": "no-such-plugin"}}, "cache.plugin"),
        ({"model": MODEL, "cache": {"plugin": "prefix-aware", "params": {"loadWeight": -1}}}, "cache.params"),
        ({"model": MODEL, "name": 7}, "name"),
    ],
)
def test_a_bad_config_stops_the_router_naming_the_key(config, named):
    with pytest.raises(SystemExit, match=named.replace(".", r"\.")):
        parse_config(config, "--config f.json")


def test_python_m_route_prints_one_ready_line_routes_and_stops_on_sigterm_without_torch(pair, tmp_path):
    probe = "import sys, agents.runtimes.route.__main__; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", probe], cwd=ROOT, check=True, timeout=60)
    config = tmp_path / "route.json"
    config.write_text(json.dumps({"model": MODEL, "name": "tiny", "cache": {"plugin": "prefix-aware"}}))
    argv = [
        sys.executable,
        "-m",
        "agents.runtimes.route",
        "--config",
        str(config),
        "--port",
        str(free_port()),
    ]
    for replica in pair:
        argv += ["--backend", replica.url]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = json.loads(proc.stdout.readline())
        assert ready["event"] == "ready"
        answer = httpx.post(
            f"{ready['url']}/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=30
        )
        assert answer.status_code == 200 and answer.json()["object"] == "text_completion"
        stats = httpx.get(f"{ready['url']}/stats").json()
        assert stats["routing"]["plugin"] == "prefix-aware" and stats["replicasReady"] == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert proc.stdout.read() == ""  # exactly one line on stdout
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_without_backends_or_watch_settings_the_router_refuses_to_start(tmp_path):
    config = tmp_path / "route.json"
    config.write_text(json.dumps({"model": MODEL}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOTILLA_")}
    done = subprocess.run(
        [sys.executable, "-m", "agents.runtimes.route", "--config", str(config)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0 and "--backend" in done.stderr and "FLOTILLA_WORKLOAD" in done.stderr
    only_url = {**env, "FLOTILLA_URL": "http://127.0.0.1:1"}
    done = subprocess.run(
        [sys.executable, "-m", "agents.runtimes.route", "--config", str(config)],
        cwd=ROOT, env=only_url, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0 and "FLOTILLA_TOKEN" in done.stderr and "FLOTILLA_NODE" in done.stderr


# --- the supervisor runs a router Workload ---------------------------------------------------


def router_workload(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "generation": 1},
        "spec": {"role": "router", "runtime": "route", "gpus": [], "nodeName": "node-a",
                 "config": {"model": MODEL, "name": "tiny"}},
    }  # fmt: skip


def test_the_supervisor_starts_a_router_workload_with_its_control_plane_settings_and_no_device(tmp_path):
    token = {"value": "flt_0123456789ab_first-token-for-the-router"}
    supervisor = Supervisor(
        tmp_path, node_name="node-a", control_plane=lambda: ("http://127.0.0.1:9", token["value"])
    )
    supervisor.sync({"chat-router": router_workload("chat-router")})
    managed: Managed = supervisor.workloads["chat-router"]
    argv = supervisor.command(managed, tmp_path / "x.json")
    assert "--device" not in argv and "--port" in argv and argv[2] == "agents.runtimes.route"
    assert supervisor.env_for(managed) == {
        "FLOTILLA_URL": "http://127.0.0.1:9", "FLOTILLA_TOKEN": token["value"],
        "FLOTILLA_NODE": "node-a", "FLOTILLA_WORKLOAD": "chat-router",
    }  # fmt: skip
    try:
        wait_for(lambda: supervisor.tick() or managed.ready, timeout=60, what="the router Running")
        status = supervisor.status_of(managed)
        assert status["phase"] == "Running" and status["conditions"][0]["reason"] == "Serving"
        source = httpx.get(f"{status['endpoint']}/stats").json()["source"]
        assert (source["kind"], source["workload"], source["node"]) == ("watch", "chat-router", "node-a")
        first_pid = managed.process.pid
        token["value"] = "flt_0123456789ab_second-token-after-registering"
        wait_for(
            lambda: supervisor.tick() or (managed.ready and managed.process.pid != first_pid), timeout=60
        )
        assert managed.restarts == 0  # a new token is not a crash
        shown = json.dumps(supervisor.status_of(managed)) + managed.log_path.read_text()
        assert "first-token" not in shown and "second-token" not in shown
    finally:
        supervisor.stop_all(grace=5)


def test_a_router_workload_waits_for_the_node_token_before_it_starts(tmp_path):
    supervisor = Supervisor(tmp_path, node_name="node-a", control_plane=lambda: None)
    supervisor.sync({"early-router": router_workload("early-router")})
    supervisor.tick()
    managed = supervisor.workloads["early-router"]
    assert managed.process is None and managed.phase == "Pending" and "register" in managed.message
