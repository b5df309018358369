"""Block-level prefix caching in the serving engine, driven by the real cache plugins, on tiny models."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from pydantic import BaseModel

from agents.agent import flat_numbers
from agents.runtimes import plugin_choice
from agents.runtimes.serve.__main__ import load_config
from agents.runtimes.serve.engine import Engine
from agents.runtimes.serve.request import Request
from agents.runtimes.serve.sampling import SamplingParams
from agents.runtimes.serve.server import ServingHTTPServer
from common import apikeys
from plugins.prefix_hash import block_hashes, model_seed
from tests.test_serve_engine import prompts, tiny_model

BS = 16
MODEL_KEY = "builtin:tiny-llama"
ONE = SamplingParams(max_tokens=1, ignore_eos=True)


def cache(plugin: str, **params) -> plugin_choice.PluginChoice:
    return plugin_choice.resolve("cache", {"plugin": plugin, "params": params}, "cache")


class Clock:
    """A monotonic clock the test moves by hand, so LRU order and pins are exact."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def names(tokens: list[int]) -> list[int]:
    return block_hashes(tokens, BS, seed=model_seed(MODEL_KEY))


def resident(engine: Engine) -> set[int]:
    return set(engine.cached_hashes())


def check_blocks(engine: Engine) -> None:
    """Every cached block's refcount is the number of running tables holding it, every
    private block has exactly one holder, and nothing else is allocated."""
    records = {r.block_id: r for r in engine.prefix.records()}
    holders = Counter(b for r in engine.running for b in r.table.blocks)
    for block, record in records.items():
        assert record.ref_count == holders[block] >= 0, (block, record)
    assert all(n == 1 for b, n in holders.items() if b not in records)
    assert len(set(records) | set(holders)) == engine.cache.allocator.used_count
    assert all(r.table is None or not r.table.blocks for r in engine.waiting)


def watch_writes(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record each block a forward pass writes into that was cached before the write (none may be)."""
    real, bad = engine.model.forward_cached, []

    def spy(tokens, positions, write_slots, *rest):
        written = {slot // BS for slot in write_slots.flatten().tolist() if slot >= 0}
        bad.extend(b for b in written if engine.prefix.is_cached(b))
        return real(tokens, positions, write_slots, *rest)

    monkeypatch.setattr(engine.model, "forward_cached", spy)
    return bad


def converse(engine: Engine, sessions: int = 3, turns: int = 3, checked: bool = False) -> list[Request]:
    """A multi-turn chat per session, every session opening with one shared system prompt;
    each turn's prompt is the whole history so far plus a new user message."""
    system = prompts([40], seed=7)[0]
    users = [prompts([5 + 3 * s + t for t in range(turns)], seed=20 + s) for s in range(sessions)]
    history = [system + users[s][0] for s in range(sessions)]
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    done: list[Request] = []
    for turn in range(turns):
        requests = [engine.submit(history[s], params, session=f"chat-{s}") for s in range(sessions)]
        while engine.has_work():
            engine.step()
            if checked:
                check_blocks(engine)
        for s, request in enumerate(requests):
            if turn + 1 < turns:
                history[s] = history[s] + request.output_ids + users[s][turn + 1]
        done += requests
    return done


def outputs(requests: list[Request]) -> list[list[int]]:
    return [r.output_ids for r in requests]


# -- the cache changes no output ------------------------------------------------------------


@pytest.fixture(scope="module", params=["float32", "float64"])
def model(request):
    return tiny_model(dtype=request.param)


@pytest.fixture(scope="module")
def uncached(model) -> list[list[int]]:
    return outputs(converse(Engine(model, kv_blocks=64, max_batch=4)))


@pytest.mark.parametrize("plugin", ["prefix-lru", "session-ttl"])
def test_greedy_output_with_the_prefix_cache_on_is_token_identical_to_it_off(model, uncached, plugin):
    engine = Engine(model, kv_blocks=64, max_batch=4, cache=cache(plugin))
    requests = converse(engine)
    assert outputs(requests) == uncached
    stats = engine.stats()["prefixCache"]
    assert stats["policy"] == plugin and stats["lookups"] == 9
    # the first turns ran together, so nothing was cached yet; every later turn reused at
    # least the three blocks of its history that the turn before it wrote
    assert stats["hits"] == 6 and stats["hitTokens"] >= 6 * 3 * BS
    assert all(r.cached_tokens >= 3 * BS for r in requests[3:])


def test_output_is_unchanged_when_a_small_cache_evicts_and_preempts_and_no_shared_block_is_written(
    model, uncached, monkeypatch
):
    engine = Engine(model, kv_blocks=10, max_batch=4, cache=cache("prefix-lru"))
    written_while_cached = watch_writes(engine, monkeypatch)
    requests = converse(engine, checked=True)
    assert outputs(requests) == uncached
    stats = engine.stats()["prefixCache"]
    assert stats["evictions"] > 0 and stats["hitTokens"] > 0
    assert sum(r.preemptions for r in requests) > 0, "the small cache should have forced preemption"
    assert written_while_cached == []
    check_blocks(engine)


def test_releasing_a_cached_block_more_often_than_it_was_taken_raises():
    engine = Engine(tiny_model(layers=1), kv_blocks=8, cache=cache("prefix-lru"))
    engine.generate(prompts([33]), ONE)
    block = engine.prefix.records()[0].block_id
    engine.prefix.acquire([block])
    engine.prefix.release([block])
    with pytest.raises(RuntimeError, match="released more often"):
        engine.prefix.release([block])
    assert engine.prefix.records()[0].ref_count == 0


def test_a_fully_cached_prompt_recomputes_its_last_block_and_leaves_the_cached_one_alone(monkeypatch):
    engine = Engine(tiny_model(layers=1), kv_blocks=8, cache=cache("prefix-lru"))
    written_while_cached = watch_writes(engine, monkeypatch)
    prompt = prompts([32])[0]
    first, again = engine.generate([prompt], ONE), engine.generate([prompt], ONE)
    assert written_while_cached == []
    assert again[0].cached_tokens == BS and again[0].output_ids == first[0].output_ids
    assert resident(engine) == set(names(prompt))


def test_the_none_plugin_reuses_nothing_and_keeps_no_blocks(model, uncached):
    engine = Engine(model, kv_blocks=64, max_batch=4, cache=cache("none"))
    assert outputs(converse(engine)) == uncached
    stats = engine.stats()
    assert stats["prefixCache"]["policy"] == "none" and stats["prefixCache"]["hitTokens"] == 0
    assert stats["prefixCache"]["cachedBlocks"] == 0 and stats["kvBlocksUsed"] == 0


def test_a_cancelled_request_releases_its_references_and_keeps_its_full_blocks_cached():
    engine = Engine(tiny_model(layers=1), kv_blocks=16, cache=cache("prefix-lru"))
    prompt = prompts([40])[0]
    engine.generate([prompt], ONE)
    reader = engine.submit(prompt + [1, 2, 3], SamplingParams(max_tokens=20, ignore_eos=True))
    engine.step()
    assert reader.cached_tokens == 2 * BS
    assert [r.ref_count for r in engine.prefix.records() if r.hash in names(prompt)] == [1, 1]
    reader.cancel()
    engine.run_until_idle()
    assert reader.finish_reason == "cancelled"
    assert all(r.ref_count == 0 for r in engine.prefix.records())
    assert set(names(prompt)) <= resident(engine)


# -- eviction order per plugin --------------------------------------------------------------


def test_prefix_lru_evicts_the_least_recently_used_blocks_deepest_first():
    clock = Clock()
    engine = Engine(tiny_model(layers=1), kv_blocks=8, cache=cache("prefix-lru"), clock=clock)
    a, b, c, d, e = prompts([33] * 5, seed=3)
    for t, prompt in enumerate((a, b, c), start=1):
        clock.t = t
        engine.generate([prompt], ONE)
    assert resident(engine) == {*names(a), *names(b), *names(c)}
    clock.t = 4
    assert engine.generate([a], ONE)[0].cached_tokens == 2 * BS  # a is used again
    clock.t = 5
    engine.generate([d], ONE)  # one block short: b's tail goes
    assert resident(engine) == {*names(a), names(b)[0], *names(c), *names(d)}
    clock.t = 6
    engine.generate([e], ONE)  # two short: b's head, then c's tail; a was used after both
    assert resident(engine) == {*names(a), names(c)[0], *names(d), *names(e)}
    assert engine.stats()["prefixCache"]["evictions"] == 3


@pytest.mark.parametrize(
    ("plugin", "kept", "lost"),
    [
        # pins outlast the newer unpinned blocks; s1's pin (soonest to expire) breaks first
        ("session-ttl", ["a0", "b0", "b1"], ["a1", "c0", "c1"]),
        # without pins the oldest simply go first
        ("prefix-lru", ["b0", "c0", "c1"], ["a0", "a1", "b1"]),
    ],
)
def test_session_ttl_keeps_pinned_blocks_over_unpinned_ones_and_breaks_pins_before_preempting(
    plugin, kept, lost
):
    clock = Clock()
    params = {"pinShare": 1.0, "ttlFirstTurnSeconds": 100.0}
    engine = Engine(tiny_model(layers=1), kv_blocks=8, cache=cache(plugin, **params), clock=clock)
    a, b, c, long = prompts([33, 33, 33, 17], seed=5)
    for t, prompt, session in ((1, a, "s1"), (5, b, "s2"), (6, c, None)):
        clock.t = t
        engine.submit(prompt, ONE, session=session)
        engine.run_until_idle()
    clock.t = 7
    # a long request that fits only by evicting three cached blocks as it decodes
    running = engine.generate([long], SamplingParams(max_tokens=60, ignore_eos=True))[0]
    blocks = {f"{n}{i}": h for n, p in (("a", a), ("b", b), ("c", c)) for i, h in enumerate(names(p))}
    assert running.preemptions == 0 and running.finish_reason == "length"
    assert {blocks[k] for k in kept} <= resident(engine)
    assert not {blocks[k] for k in lost} & resident(engine)
    assert engine.stats()["prefixCache"]["pinsBroken"] == (1 if plugin == "session-ttl" else 0)


def test_after_requests_finish_the_plugin_trims_the_cache_to_its_capacity_share():
    clock = Clock()
    lru = cache("prefix-lru", capacityShare=0.25)
    engine = Engine(tiny_model(layers=1), kv_blocks=8, cache=lru, clock=clock)
    a, b = prompts([33, 33], seed=11)
    for t, prompt in enumerate((a, b), start=1):
        clock.t = t
        engine.generate([prompt], ONE)
    assert resident(engine) == set(names(b))  # a quarter of 8 blocks: the older prefix went
    assert engine.stats()["prefixCache"]["evictions"] == 2


class NoParams(BaseModel):
    pass


class Careless:
    """A third-party cache plugin that gets eviction wrong: it names every block id there
    is (and some that are not), or none at all."""

    name = "careless"
    kind = "cache"

    def __init__(self, refuse: bool = False):
        self.refuse = refuse

    def reuses_prefixes(self, *, params):
        return True

    def evict(self, *, blocks, needed, now, total_blocks, params):
        return [] if self.refuse or not needed else [*range(total_blocks), total_blocks + 5, -1, "x"]

    def pin_seconds(self, *, turn, params):
        return float("nan")


def careless(refuse: bool = False) -> plugin_choice.PluginChoice:
    return plugin_choice.PluginChoice(Careless(refuse), NoParams())


def test_an_eviction_naming_blocks_in_use_or_unknown_frees_only_unreferenced_cached_ones():
    engine = Engine(tiny_model(layers=1), kv_blocks=8, cache=careless())
    shared, other = prompts([33, 33], seed=12)
    engine.generate([other], ONE)
    # 7 of the 8 blocks by its end: one eviction, for which the plugin names every id there is
    reader = engine.submit(shared, SamplingParams(max_tokens=80, ignore_eos=True), session="s")
    while engine.has_work():
        engine.step()
        check_blocks(engine)
    assert reader.finish_reason == "length" and reader.preemptions == 0
    assert not set(names(other)) & resident(engine) and engine.stats()["prefixCache"]["evictions"] == 2
    assert engine.stats()["prefixCache"]["pinnedBlocks"] == 0  # a NaN pin is no pin


def test_with_nothing_running_the_engine_evicts_past_a_plugin_that_refuses_to():
    engine = Engine(tiny_model(layers=1), kv_blocks=8, cache=careless(refuse=True))
    first, *rest = prompts([33] * 4, seed=13)
    engine.generate([first], ONE)
    for prompt in rest:
        assert engine.generate([prompt], ONE)[0].finish_reason == "length"
    assert set(names(rest[-1])) <= resident(engine)
    check_blocks(engine)


# -- session pins ---------------------------------------------------------------------------


def test_a_sessions_next_turn_within_its_ttl_hits_its_whole_history_and_after_it_does_not():
    clock = Clock()
    ttl = cache("session-ttl", pinShare=1.0, ttlFirstTurnSeconds=10.0, ttlMinSeconds=0.0)
    engine = Engine(tiny_model(layers=1), kv_blocks=8, cache=ttl, clock=clock)
    first, *pressure = prompts([33] * 9, seed=9)
    users = prompts([10, 10], seed=10)

    turn1 = engine.submit(first, SamplingParams(max_tokens=16, ignore_eos=True), session="chat")
    engine.run_until_idle()
    history = first + turn1.output_ids
    written = names(history[:-1])  # the last sampled token has no k/v yet
    assert len(written) == 3
    for t in (1, 2, 3):  # pressure inside the TTL evicts only unpinned blocks
        clock.t = t
        engine.generate([pressure.pop()], ONE)
    assert set(written) <= resident(engine)

    clock.t = 5
    turn2 = engine.submit(history + users[0], SamplingParams(max_tokens=5, ignore_eos=True), session="chat")
    engine.run_until_idle()
    assert turn2.cached_tokens == 3 * BS  # the whole history written so far
    # the pin now follows the gap seen (5 s since turn 1 ended): 1.5 x 5 s from the end of turn 2
    pins = {r.hash: r.pinned_until for r in engine.prefix.records()}
    assert [pins[h] for h in written] == [12.5] * 3

    clock.t = 20  # the pin has run out: pressure now evicts the session's blocks like any others
    while written[0] in resident(engine):
        engine.generate([pressure.pop()], ONE)
    turn3 = engine.submit(history + users[0] + turn2.output_ids + users[1], ONE, session="chat")
    engine.run_until_idle()
    assert turn3.cached_tokens == 0
    stats = engine.stats()["prefixCache"]
    assert stats["pinsBroken"] == 0 and stats["sessions"] == 1 and stats["hits"] == 1


def test_cache_listings_and_stats_can_be_read_from_other_threads_while_the_engine_evicts():
    engine = Engine(tiny_model(layers=1), kv_blocks=10, max_batch=4, cache=cache("session-ttl")).start()
    errors: list[Exception] = []
    done = threading.Event()

    def poll() -> None:
        while not done.wait(0.002):
            try:
                engine.cached_hashes(), engine.stats(), engine.prometheus()
            except Exception as exc:  # any failure is the finding
                errors.append(exc)
                return

    readers = [threading.Thread(target=poll) for _ in range(2)]
    for reader in readers:
        reader.start()
    try:
        params = SamplingParams(max_tokens=20, ignore_eos=True)
        requests = [engine.submit(p, params, session=f"s{i % 3}") for i, p in enumerate(prompts([40] * 12))]
        results = [r.result(timeout=60) for r in requests]
    finally:
        done.set()
        for reader in readers:
            reader.join()
        engine.stop()
    assert errors == [] and all(r.finish_reason == "length" for r in results)
    assert engine.stats()["prefixCache"]["evictions"] > 0


# -- the HTTP server ------------------------------------------------------------------------


KEY = "a-test-key-of-enough-length"


class InProcess:
    """An engine and its server on threads in this process, with an API key and prefix-lru."""

    def __init__(self) -> None:
        self.engine = Engine(tiny_model(layers=1), kv_blocks=64, cache=cache("prefix-lru")).start()
        self.sessions: list[str | None] = []
        submit = self.engine.submit

        def spy(prompt_ids, params=None, session=None):
            self.sessions.append(session)
            return submit(prompt_ids, params, session=session)

        self.engine.submit = spy  # type: ignore[method-assign]
        self.server = ServingHTTPServer(
            ("127.0.0.1", 0), self.engine, "tiny", cache=self.engine.prefix.choice,
            api_keys=[apikeys.digest(KEY)],
        )  # fmt: skip
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        self.client = httpx.Client(base_url=self.server.url, timeout=30)
        self.auth = {"Authorization": f"Bearer {KEY}"}

    def complete(self, prompt: str, **extra) -> httpx.Response:
        headers = {**self.auth, **extra.pop("headers", {})}
        body = {"prompt": prompt, "max_tokens": 4, "temperature": 0, **extra}
        return self.client.post("/v1/completions", json=body, headers=headers)

    def close(self) -> None:
        self.client.close()
        self.server.shutdown()
        self.engine.stop()
        self.server.server_close()


@pytest.fixture(scope="module")
def served() -> Iterator[InProcess]:
    server = InProcess()
    yield server
    server.close()


def test_without_a_valid_key_posts_and_cache_are_401_while_the_agents_routes_stay_open(served):
    for headers in ({}, {"Authorization": "Bearer not-the-key-at-all"}):
        response = served.client.post("/v1/completions", json={"prompt": "x"}, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"
        assert served.client.get("/cache", headers=headers).status_code == 401
    for path in ("/health", "/metrics", "/stats", "/v1/models"):
        assert served.client.get(path).status_code == 200, path
    assert served.complete("x").status_code == 200
    assert served.client.get("/cache", headers=served.auth).status_code == 200


def test_a_repeated_prompt_reports_its_cached_tokens_and_cache_lists_its_block_hashes(served):
    prompt = "The fleet's shared system prompt, at least two blocks long."
    first, second = served.complete(prompt).json(), served.complete(prompt).json()
    ids = served.engine.tokenizer.encode(prompt)
    assert first["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert second["usage"]["prompt_tokens_details"] == {"cached_tokens": 16 * ((len(ids) - 1) // 16)}
    listing = served.client.get("/cache", headers=served.auth).json()
    assert {k: listing[k] for k in ("model", "modelKey", "blockSize")} == {
        "model": "tiny",
        "modelKey": MODEL_KEY,
        "blockSize": 16,
    }
    prompt_blocks = names(ids)
    assert len(prompt_blocks) >= 2 and set(listing["hashes"][: len(prompt_blocks)]) == set(prompt_blocks)


def test_the_session_header_and_the_user_field_reach_the_engine(served):
    served.sessions.clear()
    assert served.complete("a", headers={"X-Session-Id": "from-header"}, user="ignored").status_code == 200
    assert served.complete("b", user="from-user").status_code == 200
    assert served.complete("c").status_code == 200
    assert served.sessions == ["from-header", "from-user", None]
    bad = served.complete("d", user=42)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "user"


def test_a_malformed_body_with_a_valid_key_is_a_400_in_the_openai_shape(served):
    response = served.client.post("/v1/completions", content=b"{nope", headers=served.auth)
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]


def test_stats_and_metrics_report_the_prefix_cache(served):
    prompt = "Another prompt that is comfortably longer than one block."
    served.complete(prompt), served.complete(prompt)
    stats = served.client.get("/stats").json()
    cached = stats["prefixCache"]
    assert cached["policy"] == "prefix-lru" and stats["cachePolicy"] == "prefix-lru"
    assert cached["hits"] >= 1 and cached["hitTokens"] >= 32 and cached["cachedBlocks"] >= 2
    assert cached["lookups"] == cached["hits"] + cached["misses"]
    assert {"promptTokens", "evictions", "pinsBroken", "pinnedBlocks", "sessions"} <= set(cached)
    assert flat_numbers(stats)["prefixCache.hitTokens"] == cached["hitTokens"]
    text = served.client.get("/metrics").text
    for name, kind in [
        ("hits_total", "counter"), ("misses_total", "counter"), ("hit_tokens_total", "counter"),
        ("prompt_tokens_total", "counter"), ("evictions_total", "counter"), ("pins_broken_total", "counter"),
        ("cached_blocks", "gauge"), ("pinned_blocks", "gauge"),
    ]:  # fmt: skip
        full = f"flotilla_serve_prefix_cache_{name}"
        assert f"# TYPE {full} {kind}" in text and f"# HELP {full} " in text and f"\n{full} " in text
    assert f"flotilla_serve_prefix_cache_hit_tokens_total {cached['hitTokens']}" in text


# -- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize("keys", [["plain-key-is-not-a-digest"], "sha256:" + "0" * 64, [7]])
def test_a_config_whose_api_keys_are_not_digests_is_refused_naming_the_key(tmp_path, keys):
    path = tmp_path / "serve.json"
    path.write_text(json.dumps({"model": {"source": MODEL_KEY}, "apiKeys": keys}))
    with pytest.raises(SystemExit, match="apiKeys"):
        load_config(str(path))


def test_a_config_with_digest_api_keys_is_accepted(tmp_path):
    path = tmp_path / "serve.json"
    path.write_text(json.dumps({"model": {"source": MODEL_KEY}, "apiKeys": [apikeys.digest(KEY)]}))
    assert load_config(str(path))["apiKeys"] == [apikeys.digest(KEY)]


def test_blocks_of_different_models_never_share_a_hash():
    engine = Engine(tiny_model(layers=1), kv_blocks=8, cache=cache("prefix-lru"), model_key="path:/other")
    prompt = prompts([20])[0]
    engine.generate([prompt], ONE)
    assert resident(engine) == {block_hashes(prompt, BS, seed=model_seed("path:/other"))[0]}
    assert resident(engine).isdisjoint(names(prompt))
