"""Latency targets and goodput: the highest load a configuration serves within its SLO.

Goodput (DistServe) is the arrival rate at which a configuration still meets its SLO
attainment target -- e.g. 90% of requests within both the TTFT and the TPOT limits. Dividing
by GPUs makes configurations of different sizes comparable; Mélange's "max request rate at
the SLO" of one instance per (GPU type, request-size bucket) is :func:`max_rate`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

from plugins.sim.profiles import GpuProfile
from plugins.sim.simulator import SimResult, simulate
from plugins.sim.workload import LengthDist, Request, poisson


@dataclass(frozen=True)
class Slo:
    """Targets in ms (None: no target) and the share of requests that must meet both."""

    ttft_ms: float | None
    tpot_ms: float | None
    attainment: float = 0.9  # DistServe judges P90

    def __post_init__(self) -> None:
        for name in ("ttft_ms", "tpot_ms"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"slo {name} must be > 0 or None, got {value!r}")
        if not 0 < self.attainment <= 1:
            raise ValueError(f"slo attainment must be within (0, 1], got {self.attainment!r}")


def meets(result: SimResult, slo: Slo) -> bool:
    return result.attainment(slo.ttft_ms, slo.tpot_ms) >= slo.attainment


def steady(result: SimResult) -> SimResult:
    """Only the requests that arrived in the second half of the run.

    A simulation starts from an empty engine: the first requests meet no queue and a
    small batch, so a load above capacity still passes while its queue is building
    up. Judged over a whole short trace, one H100 "sustained" 40 req/s of 512/128
    Llama-3-8B at a 1 s TTFT; over the second half of 1,000 requests it sustains 34,
    and longer traces converge near 32. Judging the second half of a trace that long
    costs a twentieth of that error and a third of the time of a longer trace.
    """
    if not result.requests:
        return result
    first = min(r.arrival_s for r in result.requests)
    last = max(r.arrival_s for r in result.requests)
    cut = first + (last - first) / 2
    return SimResult([r for r in result.requests if r.arrival_s >= cut], result.duration_s, result.gpus)


def _search(
    make_requests: Callable[[float], list[Request] | None],
    run: Callable[[list[Request]], SimResult],
    slo: Slo,
    lo: float,
    hi: float | None,
    tolerance: float,
    max_iterations: int,
) -> tuple[float, int]:
    """(goodput, gpus of the runs); see :func:`goodput`."""
    if lo < 0 or (hi is not None and not hi > 0):
        raise ValueError(f"goodput search needs lo >= 0 and hi > 0, got lo={lo}, hi={hi}")
    if not tolerance > 0:
        raise ValueError(f"tolerance must be > 0, got {tolerance}")
    gpus = 0

    def ok(rate: float) -> bool:
        nonlocal gpus
        trace = make_requests(rate)
        if trace is None:  # too long a trace to judge this rate: not sustained
            return False
        result = run(trace)
        gpus = result.gpus
        return meets(steady(result), slo)

    good = lo  # meets the SLO (0: nothing known)
    bad = math.inf  # does not
    rate = hi if hi is not None and hi > lo else (2 * lo if lo > 0 else 1.0)
    if ok(rate):  # exponential search up for a failing rate
        good = rate
        for _ in range(max_iterations):
            rate *= 2
            if not ok(rate):
                bad = rate
                break
            good = rate
        else:
            return good, gpus
    else:
        bad = rate
        if lo == 0:  # ... or down for a passing one
            for _ in range(max_iterations):
                rate /= 2
                if ok(rate):
                    good = rate
                    break
                bad = rate
            else:
                return 0.0, gpus
    for _ in range(max_iterations):  # bisection between a passing and a failing rate
        if bad - good <= tolerance * bad:
            break
        mid = (good + bad) / 2
        if ok(mid):
            good = mid
        else:
            bad = mid
    return good, gpus


def goodput(
    make_requests: Callable[[float], list[Request] | None],
    run: Callable[[list[Request]], SimResult],
    slo: Slo,
    lo: float = 0.0,
    hi: float | None = None,
    tolerance: float = 0.02,
    max_iterations: int = 20,
) -> float:
    """The highest arrival rate (requests/s) whose trace ``run`` serves within ``slo``,
    judged in steady state (:func:`steady`: the trace's second half, so make it long).

    ``make_requests(rate)`` builds the trace at a rate and should be seeded, so that only
    the load changes between calls; None means the rate would need a longer trace than
    the caller will simulate, and counts as failing (see :func:`judged_length`). ``lo`` is
    a rate known to pass (0: none), ``hi`` a first guess at a failing one (doubled while it
    still passes). The search doubles (or halves)
    from there until it brackets the answer, then bisects until the bracket is within
    ``tolerance`` of the failing rate. 0.0 when even a tiny rate misses the SLO.
    """
    return _search(make_requests, run, slo, lo, hi, tolerance, max_iterations)[0]


def goodput_per_gpu(
    make_requests: Callable[[float], list[Request] | None],
    run: Callable[[list[Request]], SimResult],
    slo: Slo,
    lo: float = 0.0,
    hi: float | None = None,
    tolerance: float = 0.02,
    max_iterations: int = 20,
    gpus: int | None = None,
) -> float:
    """:func:`goodput` divided by the GPUs the configuration uses (``SimResult.gpus`` unless given)."""
    rate, used = _search(make_requests, run, slo, lo, hi, tolerance, max_iterations)
    count = gpus if gpus is not None else used
    if count < 1:
        raise ValueError(f"gpus must be >= 1, got {count}")
    return rate / count


# The longest trace a goodput search simulates per rate (a few seconds of simulation).
MAX_JUDGED_REQUESTS = 20_000


def judged_length(rate: float, slo: Slo, output_tokens: float, minimum: int = 1000) -> int | None:
    """How many requests a trace at ``rate`` needs for :func:`steady` to judge it, or None
    past ``MAX_JUDGED_REQUESTS``.

    Its second half must span several requests' latency budgets: a burst shorter than
    one budget is served within the SLO by any engine that can merely hold it, so a
    1,000-request trace of 16-token requests "passed" on one H100 at 10^8 req/s. With
    the trace at least four budgets long, a rate is judged only by what the engine
    sustains; one that would need more than ``MAX_JUDGED_REQUESTS`` counts as failing,
    which bounds what one replica can be credited with (over 1,000 req/s even for short
    requests at a 2 s TTFT).
    """
    ttft_s = (slo.ttft_ms or 10_000.0) / 1e3
    tpot_s = (slo.tpot_ms or 200.0) / 1e3
    seconds = 4 * (ttft_s + max(output_tokens - 1, 0) * tpot_s)
    count = max(minimum, math.ceil(rate * seconds))
    return count if count <= MAX_JUDGED_REQUESTS else None


def _capacity_guess(profile: GpuProfile, input_tokens: int, output_tokens: int) -> float:
    """A rough saturation rate of one instance, to start the search near the answer."""
    per_request = input_tokens + output_tokens
    batch = max(1, min(profile.max_batch, profile.kv_capacity_tokens // max(per_request, 1)))
    context = batch * (input_tokens + output_tokens / 2)
    step_s = profile.decode_ms(batch, int(context)) / 1e3
    prefill_s = profile.prefill_ms(input_tokens) / 1e3
    seconds_per_request = step_s * max(output_tokens - 1, 0) / batch + prefill_s
    return 1.0 / seconds_per_request if seconds_per_request > 0 else 1.0


@functools.lru_cache(maxsize=4096)
def max_rate(
    profile: GpuProfile, input_tokens: int, output_tokens: int, slo: Slo, seed: int = 0, requests: int = 1000
) -> float:
    """The highest Poisson rate one instance of ``profile`` sustains at ``slo`` for requests of
    exactly these lengths -- Mélange's per-bucket capacity. Seeded and memoised: a planner
    asks for the same (profile, bucket, SLO) many times."""
    inputs, outputs = LengthDist.fixed(input_tokens), LengthDist.fixed(output_tokens)

    def make(rate: float) -> list[Request] | None:
        count = judged_length(rate, slo, output_tokens, minimum=requests)
        return (
            None if count is None else poisson(rate, count=count, inputs=inputs, outputs=outputs, seed=seed)
        )

    def run(trace: list[Request]) -> SimResult:
        return simulate(trace, profile)

    return goodput(make, run, slo, hi=_capacity_guess(profile, input_tokens, output_tokens))
