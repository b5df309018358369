"""The serving simulator against hand-computed engine schedules, and its fast path against stepping."""

from __future__ import annotations

import math
import time

import pytest

from plugins.sim import (
    SHAPES,
    GpuProfile,
    LengthDist,
    Request,
    RequestResult,
    SimResult,
    Slo,
    estimate,
    goodput,
    poisson,
    short_chat,
    simulate,
    simulate_disaggregated,
)
from plugins.sim import simulator as sim_module

# prefill 10 + 0.1/token ms; decode 5 + 1/sequence + 0.01/context token ms; 16-token blocks
PROFILE = GpuProfile(
    gpu_type="X", model="m", source="measured",
    prefill_base_ms=10.0, prefill_ms_per_token=0.1, prefill_ms_per_token_sq=0.0,
    decode_base_ms=5.0, decode_ms_per_seq=1.0, decode_ms_per_context_token=0.01,
    kv_capacity_tokens=10_000, max_batch=8, power_watts=300.0,
)  # fmt: skip
H100_8B = estimate("H100", SHAPES["llama-3-8b"])


def with_(profile: GpuProfile, **changes) -> GpuProfile:
    return GpuProfile.from_dict({**profile.to_dict(), **changes})


def ms(seconds: float) -> float:
    return seconds * 1e3


def test_a_single_request_costs_one_prefill_then_decode_steps():
    result = simulate([Request(7, 1.0, 100, 5)], PROFILE)
    (r,) = result.requests
    assert (r.id, r.arrival_s, r.preemptions, r.rejected) == (7, 1.0, 0, False)
    assert ms(r.ttft_s) == pytest.approx(PROFILE.prefill_ms(100)) == pytest.approx(20.0)
    # four decode steps over a context of 101..104 tokens: 7.01 + 7.02 + 7.03 + 7.04 ms
    assert ms(r.tpot_s) == pytest.approx(28.1 / 4)
    assert ms(r.e2e_s) == pytest.approx(48.1)
    assert result.gpus == 1 and result.duration_s == pytest.approx(0.0481)


def test_a_step_decodes_then_prefills_and_late_arrivals_wait_for_the_next_step():
    a, b = Request(0, 0.0, 100, 10), Request(1, 0.021, 50, 2)
    result = simulate([a, b], PROFILE)
    # step 0 prefills A (0-20 ms); step 1 decodes A (20-27.01), B arrives at 21 and waits;
    # step 2 decodes A (7.02) then prefills B (15): B's first token at 49.03 ms.
    rb = result.requests[1]
    assert ms(rb.ttft_s) == pytest.approx(49.03 - 21.0)
    # step 3 decodes both, padded to A's 103 tokens: 5 + 2 + 2.06 ms
    assert ms(rb.tpot_s) == pytest.approx(9.06)
    assert ms(rb.e2e_s) == pytest.approx(58.09 - 21.0)


def test_one_request_with_one_output_token_finishes_at_its_prefill():
    (r,) = simulate([Request(0, 0.0, 64, 1)], PROFILE).requests
    assert ms(r.ttft_s) == ms(r.e2e_s) == pytest.approx(16.4) and r.tpot_s == 0.0


def test_max_batch_holds_back_admission_until_a_slot_frees():
    profile = with_(PROFILE, maxBatch=1)
    a, b = simulate([Request(0, 0.0, 100, 3), Request(1, 0.0, 100, 2)], profile).requests
    assert ms(a.e2e_s) == pytest.approx(20 + 7.01 + 7.02)
    assert ms(b.ttft_s) == pytest.approx(ms(a.e2e_s) + 20)


def test_waiting_requests_are_prefilled_together_within_the_token_budget():
    both = [Request(0, 0.0, 100, 2), Request(1, 0.0, 60, 2)]
    a, b = simulate(both, PROFILE).requests
    # one padded forward of 2 rows x 100 tokens
    assert (
        ms(a.ttft_s) == ms(b.ttft_s) == pytest.approx(PROFILE.prefill_batch_ms(2, 100)) == pytest.approx(30)
    )
    a, b = simulate(both, PROFILE, max_prefill_tokens=150).requests
    assert ms(a.ttft_s) == pytest.approx(20)
    assert ms(b.ttft_s) == pytest.approx(20 + 7.01 + 16)  # next step: A's decode, then B's prefill


def test_paged_attention_charges_the_sum_of_contexts():
    trace = [Request(0, 0.0, 100, 10), Request(1, 0.021, 50, 2)]
    padded = simulate(trace, PROFILE).requests[1]
    paged = simulate(trace, PROFILE, attention="paged").requests[1]
    assert ms(paged.tpot_s) == pytest.approx(5 + 2 + 0.01 * (103 + 51))
    assert paged.tpot_s < padded.tpot_s


def test_a_small_kv_cache_preempts_the_newest_and_everyone_still_finishes():
    profile = with_(PROFILE, kvCapacityTokens=320)  # 20 blocks of 16
    trace = [Request(i, 0.0, 40, 60) for i in range(6)]  # 3 blocks each to start, 7 at the end
    result = simulate(trace, profile)
    assert sum(r.preemptions for r in result.requests) > 0
    assert all(not r.rejected and math.isfinite(r.e2e_s) for r in result.requests)
    assert result.requests[0].preemptions == 0  # the oldest request always makes progress
    assert result.requests[-1].preemptions == max(r.preemptions for r in result.requests)
    # preempted requests are recomputed, so the batch takes longer than without pressure
    assert result.duration_s > simulate(trace, PROFILE).duration_s


def test_requests_that_can_never_fit_the_cache_are_rejected_not_hung():
    profile = with_(PROFILE, kvCapacityTokens=320)
    trace = [Request(0, 0.0, 100, 10), Request(1, 0.1, 300, 100), Request(2, 0.2, 100, 10)]
    result = simulate(trace, profile)
    assert [r.rejected for r in result.requests] == [False, True, False]
    assert result.requests[1].ttft_s == math.inf
    assert result.attainment(None, None) == pytest.approx(2 / 3)
    assert result.summary()["rejected"] == 1 and result.completed == 2


def test_jumping_quiet_decode_stretches_matches_stepping(monkeypatch):
    lengths = LengthDist.uniform(20, 300)
    small = with_(PROFILE, kvCapacityTokens=2000, maxBatch=16)
    cases = [
        (poisson(12.0, count=250, inputs=lengths, outputs=lengths, seed=1), small, {}),
        (poisson(30.0, count=250, inputs=lengths, outputs=lengths, seed=2), small, {"instances": 3}),
        (poisson(20.0, count=250, inputs=lengths, outputs=lengths, seed=3), small,
         {"instances": 2, "dispatch": "round_robin", "attention": "paged"}),
        (short_chat(15.0, 20.0, seed=4), H100_8B, {}),
    ]  # fmt: skip
    fast = [simulate(trace, profile, **kw) for trace, profile, kw in cases]
    monkeypatch.setattr(sim_module._Instance, "_jump", lambda self, horizon: False)
    slow = [simulate(trace, profile, **kw) for trace, profile, kw in cases]
    assert sum(r.preemptions for r in fast[0].requests) > 0  # the comparison covers preemption
    for a, b in zip(fast, slow, strict=True):
        for x, y in zip(a.requests, b.requests, strict=True):
            assert (x.id, x.preemptions, x.rejected) == (y.id, y.preemptions, y.rejected)
            assert (x.ttft_s, x.tpot_s, x.e2e_s) == pytest.approx(
                (y.ttft_s, y.tpot_s, y.e2e_s), rel=1e-9, abs=1e-9
            )


def test_attainment_is_high_at_low_load_and_drops_under_overload():
    low = simulate(short_chat(1.0, 120.0, seed=1), H100_8B)
    high = simulate(short_chat(200.0, 20.0, seed=1), H100_8B)
    assert low.attainment(500, 50) >= 0.99
    assert high.attainment(500, 50) < 0.5
    assert high.percentile("ttft", 90) > 10 * low.percentile("ttft", 90)


def test_two_instances_take_more_than_one_and_spread_the_load():
    pair = [Request(0, 0.0, 100, 5), Request(1, 0.0, 100, 5)]
    for dispatch in ("round_robin", "least_loaded"):
        result = simulate(pair, PROFILE, instances=2, dispatch=dispatch)
        assert [ms(r.ttft_s) for r in result.requests] == pytest.approx([20.0, 20.0])  # each alone
        assert result.gpus == 2

    slo = Slo(ttft_ms=300, tpot_ms=60)

    def make(rate: float) -> list[Request]:
        return poisson(rate, count=300, inputs=LengthDist.fixed(512), outputs=LengthDist.fixed(128), seed=0)

    one = goodput(make, lambda trace: simulate(trace, H100_8B), slo)
    two = goodput(make, lambda trace: simulate(trace, H100_8B, instances=2), slo)
    assert one > 0 and two > 1.6 * one


def test_disaggregated_ttft_is_the_prefill_and_the_transfer_lands_in_tpot():
    (r,) = simulate_disaggregated([Request(0, 0.0, 100, 5)], PROFILE, PROFILE, 1, 1).requests
    assert ms(r.ttft_s) == pytest.approx(PROFILE.prefill_ms(100))
    assert ms(r.e2e_s) == pytest.approx(20 + 28.1)  # decodes start as soon as the KV arrives
    result = simulate_disaggregated(
        [Request(0, 0.0, 100, 5)], PROFILE, PROFILE, 2, 3, transfer_ms_per_token=0.05
    )
    (r,) = result.requests
    assert ms(r.ttft_s) == pytest.approx(20)
    assert ms(r.e2e_s) == pytest.approx(20 + 5 + 28.1)
    assert ms(r.tpot_s) == pytest.approx((5 + 28.1) / 4)
    assert result.gpus == 5


def test_disaggregation_keeps_long_prefills_off_the_decoders():
    trace = poisson(6.0, count=300, inputs=LengthDist.fixed(4096), outputs=LengthDist.fixed(256), seed=0)
    colocated = simulate(trace, H100_8B, instances=2)
    split = simulate_disaggregated(trace, H100_8B, H100_8B, 1, 1)
    assert split.gpus == colocated.gpus == 2
    # decode steps no longer wait behind 4k-token prefills
    assert split.percentile("tpot", 90) < colocated.percentile("tpot", 90)
    assert all(not r.rejected for r in split.requests)


def test_result_percentiles_attainment_and_summary():
    rows = [RequestResult(i, 0.0, t, t / 10, 2 * t, 0, False) for i, t in enumerate([0.1, 0.2, 0.3, 0.4])]
    rows.append(RequestResult(4, 0.0, math.inf, math.inf, math.inf, 2, True))
    result = SimResult(rows, duration_s=2.0, gpus=4)
    assert result.percentile("ttft", 0) == pytest.approx(0.1)
    assert result.percentile("ttft", 50) == pytest.approx(0.3)
    assert result.percentile("e2e", 25) == pytest.approx(0.4)
    assert result.percentile("ttft", 90) == math.inf  # the rejection sits at the top
    assert result.attainment(250, None) == pytest.approx(2 / 5)
    assert result.attainment(None, 35) == pytest.approx(3 / 5)
    assert result.attainment(None, None) == pytest.approx(4 / 5)
    assert result.throughput_rps == pytest.approx(2.0) and result.throughput_rps() == pytest.approx(2.0)
    summary = result.summary()
    assert (summary["requests"], summary["completed"], summary["rejected"], summary["preemptions"]) == (
        5,
        4,
        1,
        2,
    )
    assert summary["ttftMs"]["p50"] == pytest.approx(300) and summary["ttftMs"]["p99"] is None
    with pytest.raises(ValueError, match="metric"):
        result.percentile("latency", 50)
    assert SimResult([], 0.0, 1).attainment(100, 10) == 1.0


def test_input_errors():
    with pytest.raises(ValueError, match="instances"):
        simulate([], PROFILE, instances=0)
    with pytest.raises(ValueError, match="dispatch"):
        simulate([], PROFILE, dispatch="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="output token"):
        simulate([Request(0, 0.0, 10, 0)], PROFILE)


def test_two_thousand_requests_simulate_quickly():
    trace = short_chat(20.0, 100.0, seed=0)[:2000]
    assert len(trace) == 2000
    started = time.perf_counter()
    result = simulate(trace, H100_8B)
    elapsed = time.perf_counter() - started
    assert result.completed == 2000
    assert elapsed < 2.0  # ~0.15 s on a laptop core; generous for loaded CI machines
