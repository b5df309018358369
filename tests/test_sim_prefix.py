"""The simulator's prefix cache: hits counted exactly, cheaper prefills, LRU capacity, session pins."""

from __future__ import annotations

import pytest

from common.specs import DeploymentSpec
from plugins.planning import demand_of, predict
from plugins.sim import SHAPES, GpuProfile, Request, estimate, simulate
from plugins.sim import simulator as sim_module
from plugins.sim.prefix import PrefixCache, Turn, shared_prefix_hashes

# prefill 10 + 0.1/token + 0.001/token² ms; decode 5 + 1/sequence + 0.01/context token ms
PROFILE = GpuProfile(
    gpu_type="X", model="m", source="measured",
    prefill_base_ms=10.0, prefill_ms_per_token=0.1, prefill_ms_per_token_sq=0.001,
    decode_base_ms=5.0, decode_ms_per_seq=1.0, decode_ms_per_context_token=0.01,
    kv_capacity_tokens=10_000, max_batch=8, power_watts=0.0,
)  # fmt: skip
LRU = PrefixCache()


def small(blocks: int) -> GpuProfile:
    return GpuProfile.from_dict({**PROFILE.to_dict(), "kvCapacityTokens": blocks * 16})


def ms(seconds: float) -> float:
    return seconds * 1e3


def test_a_second_request_prefills_only_what_follows_the_cached_prefix():
    first = Request(0, 0.0, 100, 2, block_hashes=(1, 2, 3, 4, 5, 6))
    second = Request(1, 1.0, 100, 2, block_hashes=(1, 2, 3, 4, 7, 8))  # shares 4 blocks: 64 tokens
    result = simulate([first, second], PROFILE, cache=LRU)
    a, b = result.requests
    assert (a.cached_tokens, b.cached_tokens) == (0, 64)
    assert ms(a.ttft_s) == pytest.approx(10 + 0.1 * 100 + 0.001 * 100 * 100)
    # 36 new tokens, each attending over the whole 100-token prompt
    assert ms(b.ttft_s) == pytest.approx(10 + 0.1 * 36 + 0.001 * 36 * 100)
    stats = result.prefix_cache
    assert (stats["hits"], stats["misses"], stats["hitTokens"], stats["promptTokens"]) == (1, 1, 64, 200)
    assert stats["hitRate"] == pytest.approx(64 / 200)


def test_without_a_cache_the_same_trace_prefills_everything():
    trace = [
        Request(0, 0.0, 100, 2, block_hashes=(1, 2, 3, 4, 5, 6)),
        Request(1, 1.0, 100, 2, block_hashes=(1, 2, 3, 4, 5, 6)),
    ]
    result = simulate(trace, PROFILE)
    assert [r.cached_tokens for r in result.requests] == [0, 0]
    assert result.prefix_cache is None
    assert ms(result.requests[1].ttft_s) == pytest.approx(10 + 10 + 10)


def test_a_next_turn_reuses_the_blocks_the_previous_answer_wrote():
    # 64 prompt tokens + 33 generated: 96 written (the last token never is), 6 full blocks
    turn = Request(0, 0.0, 64, 33, block_hashes=(1, 2, 3, 4, 5, 6), session="s")
    follow_up = Request(1, 5.0, 120, 2, block_hashes=(1, 2, 3, 4, 5, 6, 7), session="s")
    result = simulate([turn, follow_up], PROFILE, cache=LRU)
    assert result.requests[1].cached_tokens == 96


def test_a_prompt_that_is_all_prefix_still_computes_its_last_block():
    trace = [
        Request(0, 0.0, 64, 2, block_hashes=(1, 2, 3, 4)),
        Request(1, 1.0, 64, 2, block_hashes=(1, 2, 3, 4)),
    ]
    second = simulate(trace, PROFILE, cache=LRU).requests[1]
    assert second.cached_tokens == 48  # three blocks: the engine needs the last token's logits
    assert ms(second.ttft_s) == pytest.approx(10 + 0.1 * 16 + 0.001 * 16 * 64)


def test_a_request_admitted_in_the_same_step_does_not_hit_what_is_being_computed():
    trace = [Request(i, 0.0, 100, 2, block_hashes=(1, 2, 3, 4, 5, 6)) for i in range(2)]
    result = simulate(trace, PROFILE, cache=LRU)
    assert [r.cached_tokens for r in result.requests] == [0, 0]
    assert result.prefix_cache["misses"] == 2


def test_a_shared_system_prompt_predicts_a_lower_ttft_with_the_cache():
    trace = [
        Request(i, i * 0.05, 600, 16, block_hashes=shared_prefix_hashes(512, 600, 16, i)) for i in range(200)
    ]
    without = simulate(trace, PROFILE, instances=2)
    with_cache = simulate(trace, PROFILE, instances=2, cache=LRU)
    assert with_cache.percentile("ttft", 90) < without.percentile("ttft", 90) / 2
    # each instance misses once, then every request finds the 512 shared tokens (32 blocks)
    assert with_cache.prefix_cache["misses"] == 2
    assert with_cache.prefix_cache["hitTokens"] == 198 * 512


def test_shared_prefix_hashes_share_the_prefix_only():
    a, b = shared_prefix_hashes(40, 100, 16, 0), shared_prefix_hashes(40, 100, 16, 1)
    assert len(a) == 6 and a[:2] == b[:2] == (1, 2) and not set(a[2:]) & set(b[2:])
    assert shared_prefix_hashes(64, 64, 16, 0)[:3] == (1, 2, 3) and shared_prefix_hashes(64, 64, 16, 0)[3] < 0


def test_lru_capacity_is_respected_and_the_least_recently_used_prefix_goes_first():
    # 12 blocks in all; each prompt is 4 full blocks (64 tokens; 5 blocks to be admitted)
    def prompt(i: int, name: int) -> Request:
        return Request(i, float(i), 64, 1, block_hashes=tuple(range(name * 10, name * 10 + 4)))

    trace = [prompt(i, name) for i, name in enumerate([1, 2, 3, 2, 4, 1, 2])]
    result = simulate(trace, small(12), cache=LRU)
    # three prompts fill the cache; prompt 2 comes back and is hit (3 blocks: the last is
    # computed); a new prompt needs room and prompt 1, now the least recently used, goes,
    # so it misses when it returns while prompt 2 is still held
    assert [r.cached_tokens for r in result.requests] == [0, 0, 0, 48, 0, 0, 48]
    assert result.prefix_cache["cachedBlocks"] <= 12
    assert result.prefix_cache["evictions"] == 1 + 3 + 4 + 1  # only ever as many as a request needed


def test_capacity_share_caps_the_idle_blocks_after_each_request():
    trace = [Request(i, float(i), 64, 1, block_hashes=tuple(range(i * 10, i * 10 + 4))) for i in range(5)]
    result = simulate(trace, small(40), cache=PrefixCache(capacity_share=0.25))
    assert result.prefix_cache["cachedBlocks"] == 10  # 25% of 40
    assert simulate(trace, small(40), cache=LRU).prefix_cache["cachedBlocks"] == 20


def test_session_pins_keep_a_conversation_through_traffic_that_lru_lets_evict_it():
    seen: list[Turn] = []

    def pin_ten_seconds(turn: Turn) -> float:
        seen.append(turn)
        return 10.0

    def trace() -> list[Request]:
        out = [Request(0, 0.0, 64, 1, block_hashes=(1, 2, 3, 4), session="s")]
        out += [
            Request(i, 0.1 * i, 64, 1, block_hashes=tuple(range(i * 10, i * 10 + 4))) for i in range(1, 4)
        ]
        out.append(Request(4, 1.0, 80, 1, block_hashes=(1, 2, 3, 4, 5), session="s"))
        return out

    lru = simulate(trace(), small(12), cache=LRU)
    pinned = simulate(trace(), small(12), cache=PrefixCache(pin_seconds=pin_ten_seconds))
    assert lru.requests[4].cached_tokens == 0  # three one-shot prompts pushed the session out
    assert pinned.requests[4].cached_tokens == 64
    assert pinned.prefix_cache["pinsBroken"] == 0
    assert seen[0].session == "s" and seen[0].blocks == 4 and seen[0].gaps == ()
    assert seen[1].gaps == pytest.approx((1.0 - lru_end(pinned),))


def lru_end(result) -> float:
    first = result.requests[0]
    return first.arrival_s + first.e2e_s


def test_pins_are_broken_under_pressure_before_a_request_is_refused():
    trace = [Request(0, 0.0, 64, 1, block_hashes=(1, 2, 3, 4), session="s")]
    trace += [
        Request(i, 0.1 * i, 160, 1, block_hashes=tuple(range(i * 20, i * 20 + 10))) for i in range(1, 3)
    ]
    result = simulate(trace, small(12), cache=PrefixCache(pin_seconds=lambda turn: 60.0))
    assert all(not r.rejected for r in result.requests)
    assert result.prefix_cache["pinsBroken"] >= 1


def test_a_dispatch_function_sees_what_each_instance_holds():
    seen = []

    def by_prefix(request: Request, instances: list[sim_module.InstanceView]) -> int:
        seen.append([request.block_hashes[0] in view.cached for view in instances])
        held = [view.index for view in instances if request.block_hashes[0] in view.cached]
        return held[0] if held else request.id % len(instances)

    trace = [
        Request(i, float(i), 64, 1, block_hashes=(i % 2 + 1, 100 + i, 200 + i, 300 + i)) for i in range(4)
    ]
    result = simulate(trace, PROFILE, instances=2, dispatch=by_prefix, cache=LRU)
    assert seen == [[False, False], [False, False], [True, False], [False, True]]
    assert [r.cached_tokens for r in result.requests] == [0, 0, 16, 16]
    with pytest.raises(ValueError, match="instance index"):
        simulate(trace, PROFILE, instances=2, dispatch=lambda request, views: 5)


def test_shared_blocks_survive_preemption_and_every_block_comes_back(monkeypatch):
    finished: list[sim_module._Instance] = []
    advance = sim_module._Instance.advance

    def keep(self, horizon):
        advance(self, horizon)
        finished.append(self)

    monkeypatch.setattr(sim_module._Instance, "advance", keep)
    # 20 blocks: eight requests sharing 3 blocks and growing to 5 each preempt one another
    trace = [Request(i, 0.0, 50, 40, block_hashes=(1, 2, 3)) for i in range(8)]
    result = simulate(trace, small(20), cache=LRU)
    assert sum(r.preemptions for r in result.requests) > 0
    assert all(not r.rejected for r in result.requests)
    instance = finished[-1]
    assert instance.free == instance.total_blocks and not instance.cache.refs
    assert instance.cache.idle <= instance.total_blocks


def test_jumping_with_a_cache_matches_stepping(monkeypatch):
    trace = [
        Request(
            i,
            i * 0.03,
            200 + (i % 5) * 30,
            20 + i % 7,
            block_hashes=shared_prefix_hashes(160, 200 + (i % 5) * 30, 16, i),
            session=f"s{i % 4}",
        )
        for i in range(60)
    ]
    cache = PrefixCache(pin_seconds=lambda turn: 0.5)
    fast = simulate(trace, small(80), instances=2, cache=cache)
    monkeypatch.setattr(sim_module._Instance, "_jump", lambda self, horizon: False)
    slow = simulate(trace, small(80), instances=2, cache=cache)
    for a, b in zip(fast.requests, slow.requests, strict=True):
        assert a.ttft_s == pytest.approx(b.ttft_s) and a.e2e_s == pytest.approx(b.e2e_s)
        assert a.cached_tokens == b.cached_tokens


def deployment(cache: str | None, shared: int | None = 1536) -> DeploymentSpec:
    document = {
        "model": {"source": "builtin:tiny-llama", "config": SHAPES["llama-3-8b"].to_config()},
        "workload": {
            "requestsPerSecond": 8,
            "inputTokens": 2048,
            "outputTokens": 64,
            "sharedPrefixTokens": shared,
        },
        "slo": {"ttftMs": 2000, "tpotMs": 100},
    }
    if cache:
        document["policies"] = {"cache": cache}
    return DeploymentSpec.model_validate(document)


def test_plan_counts_shared_prefix_tokens_as_hits_only_when_the_cache_policy_reuses_prefixes():
    profile = estimate("L4", SHAPES["llama-3-8b"])
    demands = {name: demand_of(deployment(name)) for name in ("prefix-aware", "session-ttl", "none", None)}
    assert demands["prefix-aware"].shared_prefix_tokens == demands["session-ttl"].shared_prefix_tokens == 1536
    assert demands["none"].shared_prefix_tokens == demands[None].shared_prefix_tokens == 0
    assert demand_of(deployment("prefix-aware"), reuses_prefixes=False).shared_prefix_tokens == 0
    assert demand_of(deployment("prefix-aware", shared=None)).shared_prefix_tokens == 0
    assert "1536 shared prefix tokens" in demands["prefix-aware"].describe_source()
    cached = predict(demands["prefix-aware"], {"L4": 2}, {"L4": profile})
    plain = predict(demands[None], {"L4": 2}, {"L4": profile})
    assert cached.ttft_p90_ms < plain.ttft_p90_ms / 2
