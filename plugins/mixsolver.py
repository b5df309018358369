"""The Mélange GPU-mix solver: the cheapest mix of GPU types that serves a workload at its SLO.

Mélange (Griggs et al., 2024, "Mélange: Cost Efficient Large Language Model Serving by
Exploiting GPU Heterogeneity") treats GPU allocation as cost-aware bin packing. The workload
is a histogram over (input length × output length) buckets with a total request rate. Each
bucket's rate is cut into ``slice_factor`` equal slices and every slice goes to exactly one
GPU type. A slice of rate ``r`` of bucket ``b`` placed on type ``g`` uses ``r / maxRPS[g][b]``
of one GPU, where ``maxRPS[g][b]`` is the highest rate ONE GPU of that type sustains on that
bucket at the SLO (0: it cannot serve that bucket at the SLO). Per type the summed load must
fit in the integer count ``N_g``; the objective is ``Σ N_g · price_g``.

Why a slice factor: small, cheap GPUs are often the most cost-efficient for short requests,
large ones for long requests; slicing lets one bucket be split between types so that the
fractional GPUs left over by the other buckets are used.

The MILP as implemented (``solve``)
-----------------------------------
Slices of one bucket all have the same rate, so the binary ``x[s, g]`` of the paper are
aggregated per bucket into integers ``y[b, g] = Σ_{s in b} x[s, g] ∈ {0..slice_factor}``.
Every ``x`` gives a ``y`` with the same loads and cost and every ``y`` expands back into
``x`` (the first ``y[b, g0]`` slices to ``g0``, the next to ``g1``, ...), so the optimum is
the same; what changes is that the many symmetric copies of each solution (swap two slices
of one bucket) disappear, which is what makes HiGHS prove optimality fast. With ``B`` the
buckets that carry traffic and ``rate_b = fraction_b · rps / slice_factor``::

    minimise    Σ_g (price_g / p_ref + ε_n + ε_p · power_g / power_max) · N_g
    subject to  Σ_g y[b, g] = slice_factor                       for b in B  (every slice placed)
                Σ_b y[b, g] · rate_b / maxRPS[g][b] - N_g ≤ 0      for every type g
                Σ_g power_g · N_g ≤ power budget                   (only with a budget)
                y[b, g] ∈ {0..slice_factor}, only where maxRPS[g][b] > 0
                N_g ∈ {0..available_g} (unbounded above when available is None)

``p_ref`` is the cheapest positive price, so the cost part is in units of the cheapest GPU
(HiGHS sees the objective times ``OBJECTIVE_SCALE`` so that the tie-breaks stay far above
its absolute tolerances). The tie-break ``ε_n = 1e-6`` per GPU prefers fewer GPUs among
mixes of equal cost (and keeps free, price-0 types from being bought without need);
``ε_p ≤ 1e-7`` per GPU prefers lower power after that. Together they are worth at most
1.1e-6 · p_ref per GPU, so they can only prefer a mix that costs more than the optimum by
less than 1.1e-6 · p_ref times its GPU count, i.e. by about a millionth of the cost: a
fraction of a cent for any real price list, so in practice the optimum cost is unchanged.
The reported ``cost_per_hour`` is recomputed from the counts, without them.

Counts are recomputed from the placed load as ``ceil(load - 1e-6)`` (the tolerance absorbs
HiGHS's feasibility tolerance and float rounding of loads meant to be whole), which never
exceeds the solver's ``N_g``, so ``available`` and the power budget still hold.

When that MILP is infeasible (``available`` or the power budget is too small), a second
problem lets slices go unplaced (``Σ_g y[b, g] ≤ slice_factor``) and is solved twice,
lexicographically: first maximise the served rate ``Σ y[b, g] · rate_b``, then minimise the
cost subject to serving that rate. The answer is the best partial mix, with a ``shortfall``
message that estimates how many more GPUs of which type would serve the rest.

Small problems are not given to HiGHS at all: with at most ``ENUMERATION_LIMIT`` ways to
split the slices (one bucket over four types: 35), ``solve`` tries every one with the same
objective and constraints (``solver == "enumeration"``, exact). HiGHS costs a few
milliseconds per call however small the problem, and the owner controller solves one per
Deployment it sizes: at 1,000 Deployments that was a tenth of the scheduling time.

If HiGHS raises, or stops at the time limit without any feasible point, ``solve`` falls back
to ``solve_greedy`` (``solver == "greedy"``), an upper bound on the cost, never a proof.

``time_limit_s`` bounds the whole call: each HiGHS run gets what is left of it, less a small
reserve for building the answer (or the greedy fallback).
"""

from __future__ import annotations

import itertools
import math
import numbers
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from common.problems import Problem

__all__ = [
    "GpuOption",
    "MixError",
    "MixProblem",
    "MixSolution",
    "SliceAssignment",
    "problem_from_json",
    "solve",
    "solve_greedy",
    "validate",
]

# A load may exceed its GPU count by this much and still fit: HiGHS's feasibility
# tolerance, and the rounding of rate / maxRPS sums that are meant to be whole numbers.
COUNT_TOL = 1e-6
# The distribution's fractions must sum to 1 within this.
DISTRIBUTION_TOL = 1e-6
# Relative optimality gap handed to HiGHS (its default, 1e-4, would call a mix "optimal"
# while it could still be 0.01 % too expensive; 1e-9 costs little on problems this size).
MIP_REL_GAP = 1e-9
# Tie-breaks, in units of the cheapest positive price: per GPU, and per GPU at the highest draw.
COUNT_TIE_BREAK = 1e-6
POWER_TIE_BREAK = 1e-7
# The cheapest GPU costs this much in the objective handed to HiGHS, so that the tie-breaks
# stay well above its absolute tolerances (1e-6 gap, 1e-7 feasibility) and are really applied.
OBJECTIVE_SCALE = 1e3
# Kept back from HiGHS to build the answer (or run the greedy fallback): this share of the
# time limit, at least RESERVE_MIN_S seconds, so that the whole call stays within the limit.
RESERVE_SHARE = 0.1
RESERVE_MIN_S = 0.02
# The shortest time limit handed to one HiGHS run, even when the budget is already spent.
MIN_MILP_S = 0.01
# Problems with at most this many slice splits are solved by trying each (see above).
ENUMERATION_LIMIT = 2000

# scipy.optimize.milp status codes (HiGHS model status, simplified by scipy).
_OPTIMAL, _LIMIT, _INFEASIBLE = 0, 1, 2


@dataclass(frozen=True)
class GpuOption:
    """One GPU type that may be bought."""

    name: str
    price_per_hour: float
    max_rps: tuple[float, ...]  # per bucket, flattened row-major (input bucket × output bucket)
    available: int | None = None  # GPUs of this type actually free; None = unlimited
    power_watts: float | None = None  # draw of one GPU at load; needed only with a power budget


@dataclass(frozen=True)
class MixProblem:
    """The workload and the GPU types to serve it with.

    ``bucket_shape`` (rows = input buckets, columns = output buckets) is optional and only
    used to name buckets in messages as "input bucket i, output bucket j".
    """

    gpus: tuple[GpuOption, ...]
    distribution: tuple[float, ...]  # fraction of requests per bucket (sums to 1 within 1e-6)
    requests_per_second: float
    slice_factor: int = 4
    power_budget_watts: float | None = None
    bucket_shape: tuple[int, int] | None = None


@dataclass
class SliceAssignment:
    """Slice ``slice`` (0-based, within its bucket) of bucket ``bucket`` goes to type ``gpu``."""

    bucket: int
    slice: int
    gpu: str
    requests_per_second: float


@dataclass
class MixSolution:
    counts: dict[str, int]  # every type, zeros included
    cost_per_hour: float
    assignment: list[SliceAssignment]  # every served slice exactly once
    solver: str  # "enumeration" or "milp" (exact), or "greedy"
    optimal: bool  # True only when HiGHS proved optimality
    served_rps: float  # == requests_per_second unless limited by availability/power
    power_watts: float | None  # total draw, when the power of every bought type is known
    shortfall: str | None  # None when the whole workload is served; else says what is missing

    def to_dict(self) -> dict[str, Any]:
        """The ``plan mix -o json`` document (camelCase, like the rest of the API)."""
        return {
            "counts": dict(self.counts),
            "costPerHour": self.cost_per_hour,
            "assignment": [
                {
                    "bucket": a.bucket,
                    "slice": a.slice,
                    "gpu": a.gpu,
                    "requestsPerSecond": a.requests_per_second,
                }
                for a in self.assignment
            ],
            "solver": self.solver,
            "optimal": self.optimal,
            "servedRequestsPerSecond": self.served_rps,
            "powerWatts": self.power_watts,
            "shortfall": self.shortfall,
        }


class MixError(Problem):
    """Input that cannot be solved at all; the message names the field and the fix.

    ``field`` is the path in the ``plan mix`` input format (``gpus.H100.pricePerHour``),
    so the same message fits both the Python API and the CLI.
    """

    def __init__(self, field: str, message: str, fix: str):
        super().__init__(message, field, fix)

    def __str__(self) -> str:
        return f"{self.field}: {self.message} (fix: {self.fix})"


# --- validation ---------------------------------------------------------------------------


def _bucket_label(problem: MixProblem, bucket: int) -> str:
    if problem.bucket_shape:
        cols = problem.bucket_shape[1]
        return f"bucket {bucket} (input bucket {bucket // cols}, output bucket {bucket % cols})"
    return f"bucket {bucket}"


def _check_number(value: float, field: str, what: str) -> None:
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise MixError(field, f"{what} must be a number, got {value!r}", f"give {what} as a number")
    if not math.isfinite(value):
        raise MixError(field, f"{what} is {value}", f"give {what} as a finite number")
    if value < 0:
        raise MixError(field, f"{what} is negative ({value:g})", f"give {what} as a number ≥ 0")


def validate(problem: MixProblem) -> None:
    """Raise ``MixError`` for input that no solver could make sense of.

    A workload that is merely too big for what is ``available`` (or for the power budget)
    is not an error: ``solve`` returns the best partial mix and says what is missing.
    """
    buckets = len(problem.distribution)
    if buckets == 0:
        raise MixError("workload.distribution", "has no buckets", "give at least one bucket fraction")
    if not problem.gpus:
        raise MixError("gpus", "no GPU types given", "add at least one GPU type with its price and rates")
    seen: set[str] = set()
    for gpu in problem.gpus:
        base = f"gpus.{gpu.name}"
        if not gpu.name:
            raise MixError("gpus", "a GPU type has an empty name", "name every GPU type")
        if gpu.name in seen:
            raise MixError(base, f"GPU type {gpu.name!r} is given twice", "give each type once")
        seen.add(gpu.name)
        _check_number(gpu.price_per_hour, f"{base}.pricePerHour", "the price per hour")
        if len(gpu.max_rps) != buckets:
            raise MixError(
                f"{base}.maxRequestsPerSecond",
                f"GPU type {gpu.name} has {len(gpu.max_rps)} buckets but the distribution has {buckets}",
                f"give {gpu.name} one maximum rate per bucket ({buckets}), in the distribution's shape",
            )
        for b, rate in enumerate(gpu.max_rps):
            _check_number(rate, f"{base}.maxRequestsPerSecond", f"the rate of {_bucket_label(problem, b)}")
        if gpu.available is not None:
            if isinstance(gpu.available, bool) or not isinstance(gpu.available, numbers.Integral):
                raise MixError(
                    f"{base}.available", f"must be a whole number, got {gpu.available!r}", "give a count"
                )
            _check_number(gpu.available, f"{base}.available", "the number of free GPUs")
        if gpu.power_watts is not None:
            _check_number(gpu.power_watts, f"{base}.powerWatts", "the power draw")
    for b, fraction in enumerate(problem.distribution):
        _check_number(fraction, "workload.distribution", f"the fraction of {_bucket_label(problem, b)}")
    total = math.fsum(problem.distribution)
    if abs(total - 1.0) > DISTRIBUTION_TOL:
        raise MixError(
            "workload.distribution",
            f"the fractions sum to {total:.9g}, not 1",
            "give the share of requests per bucket so that they sum to 1 (divide each by their sum)",
        )
    _check_number(problem.requests_per_second, "workload.requestsPerSecond", "the request rate")
    if isinstance(problem.slice_factor, bool) or not isinstance(problem.slice_factor, numbers.Integral):
        raise MixError(
            "sliceFactor", f"must be a whole number, got {problem.slice_factor!r}", "give 1 or more"
        )
    if problem.slice_factor < 1:
        raise MixError("sliceFactor", f"is {problem.slice_factor}", "give 1 or more (4 is a good default)")
    if problem.power_budget_watts is not None:
        _check_number(problem.power_budget_watts, "powerBudgetWatts", "the power budget")
        for gpu in problem.gpus:
            if gpu.power_watts is None:
                raise MixError(
                    f"gpus.{gpu.name}.powerWatts",
                    f"a power budget is given but GPU type {gpu.name} has no power draw",
                    f"give powerWatts for {gpu.name}, or drop powerBudgetWatts",
                )
    for b, fraction in enumerate(problem.distribution):
        if fraction > 0 and not any(gpu.max_rps[b] > 0 for gpu in problem.gpus):
            raise MixError(
                "workload.distribution",
                f"{_bucket_label(problem, b)} has {fraction:.4g} of the traffic but no GPU type can serve "
                "it at the SLO (maxRequestsPerSecond is 0 for every type)",
                "add a GPU type that can serve it, or set its fraction to 0 and renormalise",
            )


# --- shared bookkeeping ---------------------------------------------------------------------


@dataclass
class _Prepared:
    """The slices of a problem: buckets with traffic, the rate of one slice, and per pair
    (bucket, type) that can serve it the load one slice puts on one GPU."""

    buckets: list[int]  # flat bucket index per active bucket
    slice_rate: list[float]  # per active bucket
    pairs: list[tuple[int, int]]  # (active bucket i, type g) with maxRPS > 0
    pair_load: list[float]  # load of ONE slice of bucket i on type g


def _prepare(problem: MixProblem) -> _Prepared:
    sf = problem.slice_factor
    buckets, rates, pairs, loads = [], [], [], []
    for b, fraction in enumerate(problem.distribution):
        rate = fraction * problem.requests_per_second / sf
        if rate <= 0:
            continue  # a bucket without traffic makes no slices
        i = len(buckets)
        buckets.append(b)
        rates.append(rate)
        for g, gpu in enumerate(problem.gpus):
            if gpu.max_rps[b] > 0:
                pairs.append((i, g))
                loads.append(rate / gpu.max_rps[b])
    return _Prepared(buckets, rates, pairs, loads)


def _count(load: float) -> int:
    """GPUs needed for a load, forgiving ``COUNT_TOL`` of rounding."""
    return max(0, math.ceil(load - COUNT_TOL))


def _loads(problem: MixProblem, prep: _Prepared, placed: np.ndarray) -> list[float]:
    """Summed load per type for ``placed[i, g]`` slices of active bucket i on type g."""
    loads = [0.0] * len(problem.gpus)
    for i, b in enumerate(prep.buckets):
        for g, gpu in enumerate(problem.gpus):
            if placed[i, g]:
                loads[g] += placed[i, g] * prep.slice_rate[i] / gpu.max_rps[b]
    return loads


def _fmt(value: float) -> str:
    return f"{value:.1f}" if value >= 1 or value == 0 else f"{value:.3g}"


def _total_power(problem: MixProblem, counts: dict[str, int]) -> float | None:
    if all(gpu.power_watts is None for gpu in problem.gpus):
        return None
    if any(counts[gpu.name] and gpu.power_watts is None for gpu in problem.gpus):
        return None
    return float(sum(counts[gpu.name] * (gpu.power_watts or 0.0) for gpu in problem.gpus))


def _describe_shortfall(
    problem: MixProblem, prep: _Prepared, placed: np.ndarray, counts: dict[str, int], served: float
) -> str:
    """Say what is missing, and estimate how many more GPUs of which type would serve the rest.

    The estimate keeps the partial mix as it is and adds GPUs of one type for every slice
    left over (using the spare fraction of the GPUs of that type already bought first); it
    is "about" because reshuffling the whole mix could do slightly better.
    """
    sf = problem.slice_factor
    unplaced = [sf - int(placed[i].sum()) for i in range(len(prep.buckets))]
    loads = _loads(problem, prep, placed)
    text = f"serves {_fmt(served)} of {_fmt(problem.requests_per_second)} req/s"
    options: list[tuple[float, int, int]] = []  # (extra cost, extra GPUs, type)
    for g, gpu in enumerate(problem.gpus):
        rest = 0.0
        for i, b in enumerate(prep.buckets):
            if unplaced[i]:
                if gpu.max_rps[b] <= 0:
                    break
                rest += unplaced[i] * prep.slice_rate[i] / gpu.max_rps[b]
        else:
            extra = max(1, _count(loads[g] + rest) - counts[gpu.name])
            options.append((extra * gpu.price_per_hour, extra, g))
    options.sort()

    def phrase(extra: int, g: int) -> str:
        gpu = problem.gpus[g]
        total = counts[gpu.name] + extra
        words = f"about {extra} more {gpu.name} ({total} in all"
        if gpu.available is not None and total > gpu.available:
            words += "; none free" if gpu.available == 0 else f"; only {gpu.available} free"
        return words + ")"

    if options:
        text += "; the rest needs " + ", or ".join(phrase(extra, g) for _, extra, g in options[:2])
    else:
        # No single type serves every bucket left over: name the cheapest type per bucket.
        extra_load = [0.0] * len(problem.gpus)
        for i, b in enumerate(prep.buckets):
            if unplaced[i]:
                best = min(
                    (g for g, gpu in enumerate(problem.gpus) if gpu.max_rps[b] > 0),
                    key=lambda g, b=b: problem.gpus[g].price_per_hour / problem.gpus[g].max_rps[b],
                )
                extra_load[best] += unplaced[i] * prep.slice_rate[i] / problem.gpus[best].max_rps[b]
        parts = [
            phrase(max(1, _count(loads[g] + extra_load[g]) - counts[gpu.name]), g)
            for g, gpu in enumerate(problem.gpus)
            if extra_load[g] > 0
        ]
        text += "; the rest needs " + " and ".join(parts)
    if problem.power_budget_watts is not None:
        draw = _total_power(problem, counts) or 0.0
        text += f"; the mix draws {draw:.0f} W of the {problem.power_budget_watts:.0f} W power budget"
        if options:
            _, extra, g = options[0]
            needed = draw + extra * (problem.gpus[g].power_watts or 0.0)
            if needed > problem.power_budget_watts:
                text += f", and {extra} more {problem.gpus[g].name} would need about {needed:.0f} W"
    return text


def _solution(
    problem: MixProblem, prep: _Prepared, placed: np.ndarray, solver: str, optimal: bool
) -> MixSolution:
    """Turn slices-per-(bucket, type) into a ``MixSolution``; counts are recomputed from loads."""
    loads = _loads(problem, prep, placed)
    counts = {gpu.name: _count(loads[g]) for g, gpu in enumerate(problem.gpus)}
    assignment: list[SliceAssignment] = []
    for i, b in enumerate(prep.buckets):
        slice_index = 0
        for g, gpu in enumerate(problem.gpus):
            for _ in range(int(placed[i, g])):
                assignment.append(SliceAssignment(b, slice_index, gpu.name, prep.slice_rate[i]))
                slice_index += 1
    served = math.fsum(a.requests_per_second for a in assignment)
    complete = all(int(placed[i].sum()) == problem.slice_factor for i in range(len(prep.buckets)))
    shortfall = None if complete else _describe_shortfall(problem, prep, placed, counts, served)
    if complete:
        served = float(problem.requests_per_second)
    cost = math.fsum(counts[gpu.name] * gpu.price_per_hour for gpu in problem.gpus)
    return MixSolution(
        counts=counts,
        cost_per_hour=cost,
        assignment=assignment,
        solver=solver,
        optimal=optimal,
        served_rps=served,
        power_watts=_total_power(problem, counts),
        shortfall=shortfall,
    )


# --- greedy -------------------------------------------------------------------------------


def solve_greedy(problem: MixProblem) -> MixSolution:
    """A fast feasible mix: an upper bound on the cost, NOT the optimum (``optimal=False``).

    Slices are taken in decreasing order of the load they put on their best GPU type (the
    hardest to place first). Each goes where it costs least: first into spare fractional
    capacity of a GPU already bought (free), else to the type with the lowest cost per unit
    of load (``price / maxRPS`` times the slice's rate). ``available`` and the power budget
    are respected; a slice that fits nowhere is left unserved and reported in ``shortfall``.
    """
    validate(problem)
    prep = _prepare(problem)
    gpus = problem.gpus
    placed = np.zeros((len(prep.buckets), len(gpus)), dtype=np.int64)
    loads = [0.0] * len(gpus)
    counts = [0] * len(gpus)
    draw = 0.0
    budget = problem.power_budget_watts
    servers: dict[int, list[tuple[int, float]]] = {}
    for (i, g), load in zip(prep.pairs, prep.pair_load, strict=True):
        servers.setdefault(i, []).append((g, load))
    order = sorted(
        ((i, s) for i in range(len(prep.buckets)) for s in range(problem.slice_factor)),
        key=lambda item: (-min(load for _, load in servers[item[0]]), item),
    )
    for i, _slice in order:
        spare: list[tuple[float, int]] = []
        new: list[tuple[float, int, int]] = []
        for g, load in servers[i]:
            price = gpus[g].price_per_hour
            if counts[g] - loads[g] >= load - COUNT_TOL:
                spare.append((price * load, g))
                continue
            extra = _count(loads[g] + load) - counts[g]
            available = gpus[g].available
            if available is not None and counts[g] + extra > available:
                continue
            if budget is not None and draw + extra * (gpus[g].power_watts or 0.0) > budget + COUNT_TOL:
                continue
            new.append((price * load, extra, g))
        if spare:
            g = min(spare)[1]
        elif new:
            _, extra, g = min(new)
            counts[g] += extra
            draw += extra * (gpus[g].power_watts or 0.0)
        else:
            continue  # fits nowhere: unserved
        loads[g] += next(load for h, load in servers[i] if h == g)
        placed[i, g] += 1
    return _solution(problem, prep, placed, "greedy", optimal=False)


# --- MILP ---------------------------------------------------------------------------------


def _milp_matrix(problem: MixProblem, prep: _Prepared, served_row: bool) -> sparse.csr_array:
    """Rows: one per active bucket, one per type, the power budget, the served-rate bound.

    Columns: ``y`` per pair, then ``N`` per type.
    """
    n_pairs, n_gpus, n_buckets = len(prep.pairs), len(problem.gpus), len(prep.buckets)
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    for k, ((i, g), load) in enumerate(zip(prep.pairs, prep.pair_load, strict=True)):
        rows += [i, n_buckets + g]
        cols += [k, k]
        vals += [1.0, load]
    for g in range(n_gpus):
        rows.append(n_buckets + g)
        cols.append(n_pairs + g)
        vals.append(-1.0)
    n_rows = n_buckets + n_gpus
    if problem.power_budget_watts is not None:
        for g, gpu in enumerate(problem.gpus):
            rows.append(n_rows)
            cols.append(n_pairs + g)
            vals.append(gpu.power_watts or 0.0)
        n_rows += 1
    if served_row:
        for k, (i, _g) in enumerate(prep.pairs):
            rows.append(n_rows)
            cols.append(k)
            vals.append(prep.slice_rate[i])
        n_rows += 1
    return sparse.csr_array((vals, (rows, cols)), shape=(n_rows, n_pairs + n_gpus))


def _cost_vector(problem: MixProblem, n_pairs: int) -> np.ndarray:
    prices = [gpu.price_per_hour for gpu in problem.gpus]
    p_ref = min((p for p in prices if p > 0), default=1.0)
    power_max = max((gpu.power_watts or 0.0 for gpu in problem.gpus), default=0.0) or 1.0
    c = np.zeros(n_pairs + len(problem.gpus))
    for g, gpu in enumerate(problem.gpus):
        tie = COUNT_TIE_BREAK + POWER_TIE_BREAK * (gpu.power_watts or 0.0) / power_max
        c[n_pairs + g] = OBJECTIVE_SCALE * (gpu.price_per_hour / p_ref + tie)
    return c


def _run_milp(
    c: np.ndarray,
    matrix: sparse.csr_array,
    lower: np.ndarray,
    upper: np.ndarray,
    var_upper: np.ndarray,
    deadline: float,
) -> Any | None:
    """One HiGHS run with what is left of the time budget; None when HiGHS raised."""
    time_limit = max(MIN_MILP_S, deadline - time.perf_counter())
    try:
        return milp(
            c,
            integrality=np.ones_like(c),
            bounds=Bounds(np.zeros_like(c), var_upper),
            constraints=LinearConstraint(matrix, lower, upper),
            options={"time_limit": time_limit, "mip_rel_gap": MIP_REL_GAP},
        )
    except Exception:  # noqa: BLE001 - any HiGHS failure means: use the greedy answer
        return None


def _placed(problem: MixProblem, prep: _Prepared, x: np.ndarray) -> np.ndarray:
    placed = np.zeros((len(prep.buckets), len(problem.gpus)), dtype=np.int64)
    for k, (i, g) in enumerate(prep.pairs):
        placed[i, g] = round(x[k])
    return placed


def _better(candidate: MixSolution, incumbent: MixSolution) -> bool:
    """Whether ``candidate`` serves more, or as much for less (used against time-limited MILP mixes)."""
    tolerance = 1e-9 * max(1.0, incumbent.served_rps)
    if abs(candidate.served_rps - incumbent.served_rps) > tolerance:
        return candidate.served_rps > incumbent.served_rps
    return candidate.cost_per_hour < incumbent.cost_per_hour - 1e-9 * max(1.0, incumbent.cost_per_hour)


def _found(result: Any | None) -> bool:
    return result is not None and result.x is not None and result.status in (_OPTIMAL, _LIMIT)


def _finish(problem: MixProblem, solution: MixSolution) -> MixSolution:
    """A mix HiGHS did not prove optimal is checked against the (millisecond) greedy one."""
    if solution.optimal:
        return solution
    greedy = solve_greedy(problem)
    return greedy if _better(greedy, solution) else solution


def _splits(total: int, parts: int) -> list[tuple[int, ...]]:
    """Every way to write ``total`` as an ordered sum of ``parts`` non-negative integers."""
    if parts == 1:
        return [(total,)]
    return [(first, *rest) for first in range(total + 1) for rest in _splits(total - first, parts - 1)]


def _enumerated(problem: MixProblem, prep: _Prepared, limit: int) -> np.ndarray | None:
    """The MILP's optimum found by trying every split of every bucket's slices among the
    types that can serve it; None when there are more than ``limit`` or none is feasible
    (the MILP path then finds the best partial mix)."""
    sf, n_gpus = problem.slice_factor, len(problem.gpus)
    servers = [[g for i2, g in prep.pairs if i2 == i] for i in range(len(prep.buckets))]
    combinations = 1
    for types in servers:
        combinations *= math.comb(sf + len(types) - 1, len(types) - 1)
        if combinations > limit:
            return None
    weight = _cost_vector(problem, 0)  # the MILP's objective per GPU, tie-breaks included
    load_of = dict(zip(prep.pairs, prep.pair_load, strict=True))
    budget = problem.power_budget_watts
    best, best_value = None, math.inf
    for combo in itertools.product(*(_splits(sf, len(types)) for types in servers)):
        loads = [0.0] * n_gpus
        for i, split in enumerate(combo):
            for g, k in zip(servers[i], split, strict=True):
                loads[g] += k * load_of[(i, g)]
        counts = [_count(load) for load in loads]
        if any(
            gpu.available is not None and n > gpu.available
            for gpu, n in zip(problem.gpus, counts, strict=True)
        ):
            continue
        if (
            budget is not None
            and math.fsum(n * (gpu.power_watts or 0.0) for gpu, n in zip(problem.gpus, counts, strict=True))
            > budget
        ):
            continue
        value = math.fsum(w * n for w, n in zip(weight, counts, strict=True))
        if value < best_value:
            best, best_value = combo, value
    if best is None:
        return None
    placed = np.zeros((len(prep.buckets), n_gpus), dtype=np.int64)
    for i, split in enumerate(best):
        for g, k in zip(servers[i], split, strict=True):
            placed[i, g] = k
    return placed


def solve(
    problem: MixProblem, time_limit_s: float = 1.0, enumeration_limit: int = ENUMERATION_LIMIT
) -> MixSolution:
    """The cost-optimal mix (exact MILP with HiGHS), or the best partial mix with a shortfall.

    ``optimal`` is True only when HiGHS proved optimality (within ``MIP_REL_GAP``). When
    the time limit stops HiGHS with a mix in hand, that mix is returned with
    ``optimal=False`` (or the greedy one, should it happen to be better). See the module
    docstring for the formulation, the tie-break and the fallbacks. ``time_limit_s`` bounds
    the whole call, not each HiGHS run. Problems with at most ``enumeration_limit`` slice
    splits are solved by enumeration instead (0: always HiGHS).
    """
    deadline = time.perf_counter() + time_limit_s - max(RESERVE_MIN_S, RESERVE_SHARE * time_limit_s)
    validate(problem)
    prep = _prepare(problem)
    n_pairs, n_gpus, n_buckets = len(prep.pairs), len(problem.gpus), len(prep.buckets)
    if n_buckets == 0:  # no traffic at all: nothing to buy
        return _solution(problem, prep, np.zeros((0, n_gpus), dtype=np.int64), "milp", optimal=True)
    enumerated = _enumerated(problem, prep, enumeration_limit)
    if enumerated is not None:
        return _solution(problem, prep, enumerated, "enumeration", optimal=True)
    sf = problem.slice_factor
    var_upper = np.array(
        [float(sf)] * n_pairs
        + [np.inf if gpu.available is None else float(gpu.available) for gpu in problem.gpus]
    )
    budget = problem.power_budget_watts
    budget_lower, budget_upper = ([-np.inf], [budget]) if budget is not None else ([], [])
    cost = _cost_vector(problem, n_pairs)

    matrix = _milp_matrix(problem, prep, served_row=False)
    lower = np.array([float(sf)] * n_buckets + [-np.inf] * n_gpus + budget_lower)
    upper = np.array([float(sf)] * n_buckets + [0.0] * n_gpus + budget_upper)
    result = _run_milp(cost, matrix, lower, upper, var_upper, deadline)
    if _found(result):
        placed = _placed(problem, prep, result.x)
        return _finish(problem, _solution(problem, prep, placed, "milp", optimal=result.status == _OPTIMAL))
    if result is None or result.status != _INFEASIBLE:
        return solve_greedy(problem)  # HiGHS failed, or found nothing before the time limit

    # Proven infeasible: too few GPUs available, or too little power. Serve as much as
    # possible (pass 1, given at most half the time left), then as cheaply as possible while
    # serving that much (pass 2).
    lower[:n_buckets] = 0.0
    served = np.zeros_like(cost)
    for k, (i, _g) in enumerate(prep.pairs):
        served[k] = -prep.slice_rate[i]
    halfway = time.perf_counter() + (deadline - time.perf_counter()) / 2
    first = _run_milp(served, matrix, lower, upper, var_upper, halfway)
    if not _found(first):
        return solve_greedy(problem)
    placed = _placed(problem, prep, first.x)
    most = math.fsum(placed[i, g] * prep.slice_rate[i] for i, g in prep.pairs)
    matrix = _milp_matrix(problem, prep, served_row=True)
    floor = most - 1e-9 * max(1.0, most)
    second = _run_milp(cost, matrix, np.append(lower, floor), np.append(upper, np.inf), var_upper, deadline)
    optimal = False
    if _found(second):
        placed = _placed(problem, prep, second.x)
        optimal = first.status == _OPTIMAL and second.status == _OPTIMAL
    # else the cost pass found nothing in time: the first pass's mix still serves the most.
    return _finish(problem, _solution(problem, prep, placed, "milp", optimal=optimal))


# --- the plan mix input format --------------------------------------------------------------


class _GpuIn(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    pricePerHour: float = Field(ge=0)  # noqa: N815 - the input format's field names
    maxRequestsPerSecond: list[list[float]]  # noqa: N815
    available: int | None = Field(default=None, ge=0)
    powerWatts: float | None = Field(default=None, ge=0)  # noqa: N815


class _WorkloadIn(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    distribution: list[list[float]]
    requestsPerSecond: float = Field(ge=0)  # noqa: N815


class _MixIn(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    gpus: dict[str, _GpuIn] = Field(min_length=1)
    workload: _WorkloadIn
    sliceFactor: int = Field(default=4, ge=1)  # noqa: N815
    powerBudgetWatts: float | None = Field(default=None, ge=0)  # noqa: N815


_FIXES = {
    "pricePerHour": "give pricePerHour, the price of one GPU of this type in $/hour (a number ≥ 0)",
    "maxRequestsPerSecond": "give maxRequestsPerSecond, rows = input buckets, columns = output buckets: "
    "the highest rate one GPU sustains per bucket at the SLO (0 = cannot serve it)",
    "available": "give available as a whole number ≥ 0, or leave it out for unlimited",
    "powerWatts": "give powerWatts, the draw of one GPU at load in watts (a number ≥ 0)",
    "distribution": "give distribution, rows = input buckets, columns = output buckets: "
    "the fraction of requests per bucket, summing to 1",
    "requestsPerSecond": "give requestsPerSecond, the total request rate (a number ≥ 0)",
    "sliceFactor": "give sliceFactor as a whole number ≥ 1, or leave it out for 4",
    "powerBudgetWatts": "give powerBudgetWatts in watts (a number ≥ 0), or leave it out",
    "gpus": "give gpus as a mapping from GPU type to {pricePerHour, maxRequestsPerSecond}",
    "workload": "give workload as {distribution, requestsPerSecond}",
}
_ALLOWED = {
    (): "gpus, workload, sliceFactor, powerBudgetWatts",
    ("gpus", "*"): "pricePerHour, maxRequestsPerSecond, available, powerWatts",
    ("workload",): "distribution, requestsPerSecond",
}


def _error_from_pydantic(exc: ValidationError) -> MixError:
    errors = exc.errors()
    first = errors[0]
    loc = [str(part) for part in first["loc"]]
    field = ".".join(loc) or "input"
    message = first["msg"]
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    if first["type"] == "extra_forbidden":
        parent = tuple(loc[:-1])
        key = ("gpus", "*") if len(parent) == 2 and parent[0] == "gpus" else parent
        fix = f"remove {loc[-1]!r}; the fields here are {_ALLOWED.get(key, 'listed in the docs')}"
        return MixError(field, "unknown field", fix)
    named = next((part for part in reversed(loc) if part in _FIXES), None)
    fix = _FIXES[named] if named else "see the plan mix input format"
    return MixError(field, message, fix)


def _shape(matrix: list[list[float]]) -> tuple[int, int] | None:
    """(rows, columns), or None when the rows are ragged."""
    widths = {len(row) for row in matrix}
    return (len(matrix), widths.pop()) if len(widths) == 1 else None


def problem_from_json(data: Any) -> MixProblem:
    """Parse the ``plan mix`` input document into a validated ``MixProblem``.

    Errors are ``MixError`` with ``field`` as the path in the document, e.g.
    ``gpus.H100.maxRequestsPerSecond``, and a fix.
    """
    if not isinstance(data, dict):
        raise MixError("input", f"must be a mapping, got {type(data).__name__}", _FIXES["gpus"])
    try:
        parsed = _MixIn.model_validate(data)
    except ValidationError as exc:
        raise _error_from_pydantic(exc) from None
    distribution = parsed.workload.distribution
    shape = _shape(distribution)
    if shape is None or shape[0] == 0 or shape[1] == 0:
        raise MixError(
            "workload.distribution",
            "must be a non-empty matrix whose rows all have the same length",
            _FIXES["distribution"],
        )
    for name, gpu in parsed.gpus.items():
        gpu_shape = _shape(gpu.maxRequestsPerSecond)
        if gpu_shape != shape:
            got = "ragged rows" if gpu_shape is None else f"shape {gpu_shape[0]}×{gpu_shape[1]}"
            raise MixError(
                f"gpus.{name}.maxRequestsPerSecond",
                f"GPU type {name} has {got} but workload.distribution has shape {shape[0]}×{shape[1]}",
                f"give {name} {shape[0]} rows (input buckets) of {shape[1]} rates (output buckets)",
            )
    problem = MixProblem(
        gpus=tuple(
            GpuOption(
                name=name,
                price_per_hour=gpu.pricePerHour,
                max_rps=tuple(v for row in gpu.maxRequestsPerSecond for v in row),
                available=gpu.available,
                power_watts=gpu.powerWatts,
            )
            for name, gpu in parsed.gpus.items()
        ),
        distribution=tuple(v for row in distribution for v in row),
        requests_per_second=parsed.workload.requestsPerSecond,
        slice_factor=parsed.sliceFactor,
        power_budget_watts=parsed.powerBudgetWatts,
        bucket_shape=shape,
    )
    validate(problem)
    return problem
