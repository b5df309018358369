"""SLO attainment and goodput search over the simulator."""

from __future__ import annotations

import pytest

from plugins.sim import (
    SHAPES,
    LengthDist,
    Request,
    RequestResult,
    SimResult,
    Slo,
    estimate,
    goodput,
    goodput_per_gpu,
    max_rate,
    meets,
    poisson,
    simulate,
    steady,
)

L4_8B = estimate("L4", SHAPES["llama-3-8b"])
SLO = Slo(ttft_ms=500, tpot_ms=150)


def make(rate: float) -> list[Request]:
    return poisson(rate, count=300, inputs=LengthDist.fixed(256), outputs=LengthDist.fixed(64), seed=1)


def run(trace: list[Request]) -> SimResult:
    return simulate(trace, L4_8B)


def test_slo_validates_and_meets_compares_attainment():
    assert Slo(100, None).attainment == 0.9
    with pytest.raises(ValueError, match="ttft_ms"):
        Slo(0, 10)
    with pytest.raises(ValueError, match="attainment"):
        Slo(100, 10, attainment=1.5)
    rows = [RequestResult(i, 0.0, 0.1 * (i + 1), 0.01, 1.0, 0, False) for i in range(10)]  # TTFT 100..1000 ms
    result = SimResult(rows, 10.0, 1)
    assert meets(result, Slo(900, None))  # 9 of 10
    assert not meets(result, Slo(899, None))
    assert meets(result, Slo(500, None, attainment=0.5))
    assert not meets(result, Slo(None, 5))  # TPOT 10 ms everywhere


def test_goodput_brackets_the_highest_passing_rate():
    for tolerance in (0.02, 0.05):
        rate = goodput(make, run, SLO, tolerance=tolerance)
        assert rate > 0
        assert meets(steady(run(make(rate))), SLO)
        assert not meets(steady(run(make(rate * (1 + 2 * tolerance)))), SLO)


def test_goodput_does_not_depend_on_the_first_guess():
    reference = goodput(make, run, SLO)
    assert goodput(make, run, SLO, hi=0.01) == pytest.approx(reference, rel=0.05)  # far too low: doubles up
    assert goodput(make, run, SLO, hi=1000.0) == pytest.approx(reference, rel=0.05)  # far too high: halves
    assert goodput(make, run, SLO, lo=reference / 2) == pytest.approx(reference, rel=0.05)


def test_goodput_is_zero_when_even_one_request_alone_misses():
    # one 256-token prefill on an L4 takes ~145 ms, so a 50 ms TTFT is never met
    assert goodput(make, run, Slo(ttft_ms=50, tpot_ms=None), max_iterations=8) == 0.0


def test_goodput_per_gpu_divides_by_the_gpus_used():
    def run_two(trace: list[Request]) -> SimResult:
        return simulate(trace, L4_8B, instances=2)

    total = goodput(make, run_two, SLO)
    assert goodput_per_gpu(make, run_two, SLO) == pytest.approx(total / 2)
    assert goodput_per_gpu(make, run_two, SLO, gpus=4) == pytest.approx(total / 4)


def test_max_rate_is_monotone_in_slo_tightness_and_memoised():
    max_rate.cache_clear()
    rates = [max_rate(L4_8B, 256, 64, Slo(ttft, 150)) for ttft in (200, 400, 800, 3000)]
    assert rates == sorted(rates) and rates[0] < rates[-1]
    assert rates[0] > 0
    looser_tpot = max_rate(L4_8B, 256, 64, Slo(3000, 400))
    assert looser_tpot >= rates[-1]
    # a bigger GPU sustains more of the same bucket at the same SLO
    assert max_rate(estimate("H100", SHAPES["llama-3-8b"]), 256, 64, Slo(400, 150)) > rates[1]
    hits = max_rate.cache_info().hits
    assert max_rate(L4_8B, 256, 64, Slo(400, 150)) == rates[1]
    assert max_rate.cache_info().hits == hits + 1
    # the same bucket with longer outputs is harder
    assert max_rate(L4_8B, 256, 512, Slo(400, 150)) < rates[1]
