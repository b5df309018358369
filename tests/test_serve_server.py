"""The serving runtime as the agent runs it: ``python -m agents.runtimes.serve`` in a real subprocess."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.runtime_process import RuntimeProcess

CONFIG = {
    "model": {"source": "builtin:tiny-llama", "config": {"layers": 2, "hidden": 64, "intermediate": 128}},
    "kvCacheBlocks": 64,
    "maxBatch": 8,
}


class Served(RuntimeProcess):
    """A serve subprocess, started and waited on until it prints its ready line."""

    def __init__(self, tmp: Path):
        super().__init__("serve", tmp, CONFIG, args=["--device", "cpu"])


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    server = Served(tmp_path_factory.mktemp("serve"))
    yield server
    server.stop()


def sse_events(response: httpx.Response) -> list[str]:
    return [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]


def test_health_reports_ok_once_the_model_is_loaded(served):
    response = served.client.get("/health")
    assert response.status_code == 200 and response.json()["status"] == "ok"


def test_a_greedy_completion_returns_text_usage_and_is_deterministic(served):
    body = {"prompt": "Hello, fleet", "max_tokens": 8, "temperature": 0}
    first = served.client.post("/v1/completions", json=body).json()
    second = served.client.post("/v1/completions", json=body).json()
    assert first["object"] == "text_completion"
    choice = first["choices"][0]
    assert choice["finish_reason"] in ("length", "stop")
    assert first["usage"]["prompt_tokens"] == len("Hello, fleet") + 1
    assert 1 <= first["usage"]["completion_tokens"] <= 8
    assert choice["text"] == second["choices"][0]["text"]


def test_seeded_sampled_completions_repeat_exactly(served):
    body = {"prompt": "abc", "max_tokens": 12, "temperature": 1.0, "top_p": 0.95, "seed": 11}
    texts = {served.client.post("/v1/completions", json=body).json()["choices"][0]["text"] for _ in range(3)}
    assert len(texts) == 1


def test_chat_completion_answers_as_the_assistant(served):
    body = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
            "max_tokens": 5, "temperature": 0}  # fmt: skip
    data = served.client.post("/v1/chat/completions", json=body).json()
    assert data["object"] == "chat.completion"
    assert data["choices"][0]["message"]["role"] == "assistant"
    assert isinstance(data["choices"][0]["message"]["content"], str)
    assert data["usage"]["prompt_tokens"] > len("Be brief.hi")  # the chat template adds role markers


def test_streaming_sends_sse_chunks_that_add_up_to_the_non_streamed_text_then_done(served):
    body = {"prompt": "stream me", "max_tokens": 10, "temperature": 0}
    whole = served.client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    with served.client.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
        assert response.headers["content-type"] == "text/event-stream"
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole


def test_streaming_chat_starts_with_the_assistant_role(served):
    body = {"messages": [{"role": "user", "content": "hey"}], "max_tokens": 4, "stream": True, "seed": 1}
    with served.client.stream("POST", "/v1/chat/completions", json=body) as response:
        events = sse_events(response)
    first = json.loads(events[0])
    assert first["object"] == "chat.completion.chunk" and first["choices"][0]["delta"] == {
        "role": "assistant"
    }
    assert events[-1] == "[DONE]"


def test_metrics_are_prometheus_text_with_latency_histograms_and_kv_gauges(served):
    served.client.post("/v1/completions", json={"prompt": "m", "max_tokens": 3})
    text = served.client.get("/metrics").text
    for name in (
        "flotilla_serve_requests_total{",
        'flotilla_serve_ttft_seconds_bucket{le="+Inf"}',
        "flotilla_serve_tpot_seconds_count",
        "flotilla_serve_generated_tokens_total",
        "flotilla_serve_tokens_per_second",
        "flotilla_serve_running 0",
        "flotilla_serve_waiting 0",
        "flotilla_serve_kv_blocks_free 64",
        "flotilla_serve_kv_blocks_used 0",
        "flotilla_serve_prefix_cache_hit_tokens_total 0",
        "flotilla_serve_prefix_cache_cached_blocks 0",
    ):
        assert name in text, name


def test_stats_are_the_same_numbers_as_json(served):
    served.client.post("/v1/completions", json={"prompt": "s", "max_tokens": 2})
    stats = served.client.get("/stats").json()
    assert stats["requestsTotal"] >= 1 and stats["generatedTokensTotal"] >= 1
    assert stats["kvBlocksTotal"] == 64 and stats["kvBlocksUsed"] + stats["kvBlocksFree"] == 64
    assert stats["ttftSeconds"]["p50"] > 0 and {"running", "waiting", "tokensPerSecond"} <= set(stats)
    # no cache plugin in the config: no prefix caching, and nothing looked up
    assert stats["prefixCache"]["policy"] == "off" and stats["prefixCache"]["lookups"] == 0


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/completions", {"max_tokens": 4}, "prompt"),
        ("/v1/completions", {"prompt": 42}, "prompt"),
        ("/v1/completions", {"prompt": "x", "max_tokens": 100000}, "max_tokens"),
        ("/v1/completions", {"prompt": "x", "max_tokens": "8"}, "max_tokens"),
        ("/v1/completions", {"prompt": "x", "temperature": "hot"}, "temperature"),
        ("/v1/completions", {"prompt": "x", "top_p": 0}, "top_p"),
        ("/v1/completions", {"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ("/v1/completions", {"prompt": "x", "seed": -1}, "seed"),
        ("/v1/completions", {"prompt": "x", "stream": "yes"}, "stream"),
        ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, "messages[0]"),
        ("/v1/chat/completions", {"messages": []}, "messages"),
    ],
)
def test_an_invalid_body_is_a_400_naming_the_field(served, path, body, field):
    response = served.client.post(path, json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == field


def test_a_body_that_is_not_json_or_too_large_is_rejected_without_a_500(served):
    bad = served.client.post(
        "/v1/completions", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]
    assert served.client.post("/v1/completions", content=b"[1, 2]").status_code == 400
    huge = served.client.post("/v1/completions", content=b"x" * (2 << 20))
    assert huge.status_code == 413
    assert served.client.get("/health").status_code == 200


def test_sigterm_finishes_in_flight_streams_and_exits_zero(tmp_path):
    server = Served(tmp_path)
    with server.client.stream(
        "POST", "/v1/completions", json={"prompt": "long", "max_tokens": 200, "stream": True}
    ) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        server.proc.send_signal(signal.SIGTERM)
        rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]"
    assert server.stop() == 0
    assert any("shutting down" in line for line in server.stderr)
