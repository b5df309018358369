"""The Mélange GPU-mix solver against brute force, by hand, and at the edges. Pure: no Django.

The brute force enumerates every way to place the slices (slices of one bucket are
interchangeable, so a multiset of types per bucket), buys ``ceil(load)`` GPUs per type and
keeps the cheapest mix that serves the most: the MILP must match it exactly.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from types import SimpleNamespace

import pytest

from plugins import mixsolver
from plugins.mixsolver import (
    GpuOption,
    MixError,
    MixProblem,
    MixSolution,
    problem_from_json,
    solve,
    solve_greedy,
    validate,
)

TOL = 1e-6


# --- helpers ------------------------------------------------------------------------------


def brute_force(problem: MixProblem) -> tuple[float, float]:
    """(most req/s any mix can serve, cheapest cost of a mix serving that much)."""
    gpus = problem.gpus
    sf = problem.slice_factor
    buckets = [
        (b, f * problem.requests_per_second / sf)
        for b, f in enumerate(problem.distribution)
        if f * problem.requests_per_second > 0
    ]
    # Per bucket: the multiset of where its slices go (-1: unserved).
    choices = [
        list(
            itertools.combinations_with_replacement(
                [-1] + [g for g, gpu in enumerate(gpus) if gpu.max_rps[b] > 0], sf
            )
        )
        for b, _ in buckets
    ]
    best = (-1.0, math.inf)
    for combo in itertools.product(*choices):
        loads = [0.0] * len(gpus)
        served = 0.0
        for (b, rate), targets in zip(buckets, combo, strict=True):
            for g in targets:
                if g >= 0:
                    loads[g] += rate / gpus[g].max_rps[b]
                    served += rate
        counts = [max(0, math.ceil(load - TOL)) for load in loads]
        if any(gpu.available is not None and n > gpu.available for gpu, n in zip(gpus, counts, strict=True)):
            continue
        if problem.power_budget_watts is not None:
            draw = sum(n * gpu.power_watts for gpu, n in zip(gpus, counts, strict=True))
            if draw > problem.power_budget_watts + TOL:
                continue
        cost = sum(n * gpu.price_per_hour for gpu, n in zip(gpus, counts, strict=True))
        if served > best[0] + 1e-9 or (abs(served - best[0]) <= 1e-9 and cost < best[1]):
            best = (served, cost)
    return best


def check_feasible(problem: MixProblem, solution: MixSolution) -> None:
    """Loads fit the counts, counts fit what is available, power fits the budget, and every
    served slice is assigned exactly once (all of them when there is no shortfall)."""
    by_name = {gpu.name: gpu for gpu in problem.gpus}
    assert set(solution.counts) == set(by_name)
    loads = dict.fromkeys(by_name, 0.0)
    seen = set()
    for item in solution.assignment:
        gpu = by_name[item.gpu]
        assert gpu.max_rps[item.bucket] > 0, "a slice went to a type that cannot serve its bucket"
        loads[item.gpu] += item.requests_per_second / gpu.max_rps[item.bucket]
        assert (item.bucket, item.slice) not in seen
        seen.add((item.bucket, item.slice))
        assert 0 <= item.slice < problem.slice_factor
        expected = problem.distribution[item.bucket] * problem.requests_per_second / problem.slice_factor
        assert item.requests_per_second == pytest.approx(expected)
    for name, gpu in by_name.items():
        assert loads[name] <= solution.counts[name] + TOL
        assert gpu.available is None or solution.counts[name] <= gpu.available
    if problem.power_budget_watts is not None:
        draw = sum(solution.counts[g.name] * g.power_watts for g in problem.gpus)
        assert draw <= problem.power_budget_watts + TOL
        assert solution.power_watts == pytest.approx(draw)
    assert solution.cost_per_hour == pytest.approx(
        sum(solution.counts[g.name] * g.price_per_hour for g in problem.gpus)
    )
    served = sum(item.requests_per_second for item in solution.assignment)
    assert solution.served_rps == pytest.approx(served)
    if solution.shortfall is None:
        wanted = {
            (b, s)
            for b, f in enumerate(problem.distribution)
            if f * problem.requests_per_second > 0
            for s in range(problem.slice_factor)
        }
        assert seen == wanted
        assert solution.served_rps == pytest.approx(problem.requests_per_second)
    else:
        assert solution.served_rps < problem.requests_per_second


def random_problem(seed: int) -> MixProblem:
    rng = random.Random(seed)
    n_gpus = rng.randint(2, 3)
    rows, cols = rng.choice([(1, 2), (2, 1), (1, 3), (2, 2), (1, 4)])
    buckets = rows * cols
    weights = [0.0 if rng.random() < 0.2 else rng.random() for _ in range(buckets)]
    if not any(weights):
        weights[0] = 1.0
    total = sum(weights)
    distribution = tuple(w / total for w in weights)
    rates = [
        [0.0 if rng.random() < 0.25 else round(rng.uniform(0.5, 10), 1) for _ in range(buckets)]
        for _ in range(n_gpus)
    ]
    for b in range(buckets):
        if not any(r[b] for r in rates):
            rates[rng.randrange(n_gpus)][b] = round(rng.uniform(0.5, 10), 1)
    limited = rng.random() < 0.35
    powered = rng.random() < 0.3
    gpus = tuple(
        GpuOption(
            name=f"T{g}",
            price_per_hour=round(rng.uniform(0.3, 5.0), 2),
            max_rps=tuple(rates[g]),
            available=rng.randint(0, 4) if limited else None,
            power_watts=float(rng.choice([75, 300, 400, 700])) if powered else None,
        )
        for g in range(n_gpus)
    )
    return MixProblem(
        gpus=gpus,
        distribution=distribution,
        requests_per_second=round(rng.uniform(1.0, 30.0), 1),
        slice_factor=rng.randint(1, 2),
        power_budget_watts=float(rng.randint(300, 3000)) if powered else None,
        bucket_shape=(rows, cols),
    )


RANDOM_SEEDS = range(40)


# --- exactness against brute force ----------------------------------------------------------


@pytest.mark.parametrize("seed", RANDOM_SEEDS)
@pytest.mark.parametrize("method", ["milp", "enumeration"])
def test_exact_solvers_match_brute_force_and_honour_every_limit(seed, method):
    problem = random_problem(seed)
    most, cheapest = brute_force(problem)
    limit = 0 if method == "milp" else 10**6
    solution = solve(problem, time_limit_s=5.0, enumeration_limit=limit)
    check_feasible(problem, solution)
    # A problem that cannot be served in full goes to the MILP's partial-mix passes.
    served_in_full = most >= problem.requests_per_second - 1e-9
    assert solution.solver == (method if served_in_full else "milp")
    assert solution.optimal
    assert solution.served_rps == pytest.approx(most, abs=1e-9)
    assert solution.cost_per_hour == pytest.approx(cheapest, abs=1e-9)
    if most < problem.requests_per_second - 1e-9:
        assert solution.shortfall and solution.shortfall.startswith(
            f"serves {mixsolver._fmt(most)} of {mixsolver._fmt(problem.requests_per_second)} req/s"
        )
    else:
        assert solution.shortfall is None


@pytest.mark.parametrize("seed", RANDOM_SEEDS)
def test_greedy_is_feasible_and_never_beats_the_milp(seed):
    problem = random_problem(seed)
    greedy = solve_greedy(problem)
    exact = solve(problem, time_limit_s=5.0)
    check_feasible(problem, greedy)
    assert greedy.solver == "greedy" and not greedy.optimal
    assert greedy.served_rps <= exact.served_rps + 1e-9
    if greedy.served_rps == pytest.approx(exact.served_rps):
        assert greedy.cost_per_hour >= exact.cost_per_hour - 1e-9


def test_the_random_instances_cover_partial_and_power_limited_cases():
    """Guards the generator: the brute-force comparison must see limits that bind."""
    problems = [random_problem(seed) for seed in RANDOM_SEEDS]
    partial = [p for p in problems if brute_force(p)[0] < p.requests_per_second - 1e-9]
    assert len(partial) >= 5
    assert any(p.power_budget_watts is not None for p in partial)
    assert any(p.gpus[0].available is not None for p in partial)


# --- worked by hand -------------------------------------------------------------------------


def two_buckets(slice_factor: int = 1) -> MixProblem:
    """Short and long requests, 10 req/s each.

    Small alone: 10/10 + 10/2 = 6 GPUs at $1 = $6. Large alone: 10/12 + 10/10 = 1.83 -> 2
    GPUs at $4 = $8. Short on Small and long on Large: 1 + 1 GPU = $5, strictly cheaper.
    """
    return MixProblem(
        gpus=(
            GpuOption("Small", 1.0, (10.0, 2.0)),
            GpuOption("Large", 4.0, (12.0, 10.0)),
        ),
        distribution=(0.5, 0.5),
        requests_per_second=20.0,
        slice_factor=slice_factor,
    )


def test_mixing_types_is_strictly_cheaper_than_either_alone():
    solution = solve(two_buckets(), enumeration_limit=0)
    assert solution.counts == {"Small": 1, "Large": 1}
    assert solution.cost_per_hour == pytest.approx(5.0)
    assert [(a.bucket, a.slice, a.gpu, a.requests_per_second) for a in solution.assignment] == [
        (0, 0, "Small", 10.0),
        (1, 0, "Large", 10.0),
    ]
    assert solution.optimal and solution.solver == "milp" and solution.shortfall is None
    assert solution.served_rps == 20.0
    assert solution.power_watts is None


def test_slicing_one_bucket_across_types_uses_the_leftover_fractions():
    """One bucket at 18 req/s. Small ($1.10, 4 req/s) alone: 4.5 -> 5 GPUs = $5.50; Large
    ($3, 14 req/s) alone: 1.29 -> 2 = $6. With three slices of 6 req/s: two on one Large
    (12/14) and one on Small (6/4 = 1.5 -> 2) = $5.20, which a single slice cannot reach."""
    gpus = (GpuOption("Small", 1.1, (4.0,)), GpuOption("Large", 3.0, (14.0,)))
    whole = solve(MixProblem(gpus, (1.0,), 18.0, slice_factor=1))
    assert whole.counts == {"Small": 5, "Large": 0}
    assert whole.cost_per_hour == pytest.approx(5.5)
    sliced = solve(MixProblem(gpus, (1.0,), 18.0, slice_factor=3))
    assert sliced.counts == {"Small": 2, "Large": 1}
    assert sliced.cost_per_hour == pytest.approx(5.2)
    assert sorted(a.gpu for a in sliced.assignment) == ["Large", "Large", "Small"]


def test_ties_prefer_fewer_gpus_then_less_power():
    # One Big ($2) or two Small ($1 each) cost the same: the tie-break takes the one GPU.
    gpus = (GpuOption("Small", 1.0, (5.0,), power_watts=100), GpuOption("Big", 2.0, (10.0,), power_watts=400))
    assert solve(MixProblem(gpus, (1.0,), 10.0, slice_factor=1)).counts == {"Small": 0, "Big": 1}
    # Same price and count: the lower draw wins.
    gpus = (GpuOption("Hot", 1.0, (10.0,), power_watts=700), GpuOption("Cool", 1.0, (10.0,), power_watts=300))
    solution = solve(MixProblem(gpus, (1.0,), 10.0, slice_factor=1))
    assert solution.counts == {"Hot": 0, "Cool": 1}
    assert solution.power_watts == 300.0


def test_a_free_type_is_not_bought_beyond_its_load():
    gpus = (GpuOption("OnPrem", 0.0, (4.0,)), GpuOption("Cloud", 2.0, (10.0,)))
    solution = solve(MixProblem(gpus, (1.0,), 10.0, slice_factor=2))
    assert solution.counts == {"OnPrem": 3, "Cloud": 0}
    assert solution.cost_per_hour == 0.0


def test_buckets_without_traffic_make_no_slices():
    problem = MixProblem(
        gpus=(GpuOption("A", 1.0, (10.0, 0.0, 5.0)),),
        distribution=(0.5, 0.0, 0.5),  # bucket 1 has no server, but no traffic either
        requests_per_second=10.0,
        slice_factor=2,
    )
    solution = solve(problem)
    assert {a.bucket for a in solution.assignment} == {0, 2}
    assert len(solution.assignment) == 4
    assert solution.counts == {"A": 2}


def test_no_traffic_buys_nothing():
    problem = MixProblem((GpuOption("A", 1.0, (10.0,)),), (1.0,), 0.0)
    solution = solve(problem)
    assert solution.counts == {"A": 0} and solution.cost_per_hour == 0.0 and solution.assignment == []
    assert solution.shortfall is None and solution.optimal


# --- partial mixes ------------------------------------------------------------------------


def test_tight_availability_gives_the_best_partial_mix_and_says_what_to_buy():
    # Slices of 10 req/s. Two A100 carry one slice each, the one H100 two: 40 of 50 req/s.
    problem = MixProblem(
        gpus=(
            GpuOption("A100-80GB", 1.0, (10.0,), available=2),
            GpuOption("H100", 3.0, (20.0,), available=1),
        ),
        distribution=(1.0,),
        requests_per_second=50.0,
        slice_factor=5,
    )
    assert brute_force(problem) == (pytest.approx(40.0), pytest.approx(5.0))
    solution = solve(problem)
    check_feasible(problem, solution)
    assert solution.served_rps == pytest.approx(40.0)
    assert solution.counts == {"A100-80GB": 2, "H100": 1}
    assert solution.optimal
    assert solution.shortfall == (
        "serves 40.0 of 50.0 req/s; the rest needs about 1 more A100-80GB (3 in all; only 2 free), "
        "or about 1 more H100 (2 in all; only 1 free)"
    )
    assert solution.to_dict()["shortfall"] == solution.shortfall


def test_a_power_budget_limits_the_mix_and_the_shortfall_names_budget_and_draw():
    problem = MixProblem(
        gpus=(GpuOption("H100", 4.0, (10.0,), power_watts=700),),
        distribution=(1.0,),
        requests_per_second=30.0,
        slice_factor=3,
        power_budget_watts=1500,
    )
    solution = solve(problem)
    check_feasible(problem, solution)
    assert solution.counts == {"H100": 2}
    assert solution.served_rps == pytest.approx(20.0)
    assert solution.power_watts == 1400.0
    assert "about 1 more H100" in solution.shortfall
    assert "draws 1400 W of the 1500 W power budget" in solution.shortfall
    assert "would need about 2100 W" in solution.shortfall


def test_a_type_with_nothing_free_is_named_as_such():
    problem = MixProblem(
        gpus=(GpuOption("L4", 1.0, (5.0, 0.0)), GpuOption("H100", 4.0, (20.0, 8.0), available=0)),
        distribution=(0.5, 0.5),
        requests_per_second=10.0,
        slice_factor=1,
    )
    solution = solve(problem)
    assert solution.counts == {"L4": 1, "H100": 0}
    assert solution.served_rps == pytest.approx(5.0)
    assert "about 1 more H100 (1 in all; none free)" in solution.shortfall


# --- invalid input ------------------------------------------------------------------------


def gpu(name: str = "H100", **changes) -> GpuOption:
    fields = {"name": name, "price_per_hour": 4.0, "max_rps": (10.0, 5.0)}
    return GpuOption(**{**fields, **changes})


def problem(**changes) -> MixProblem:
    fields = {"gpus": (gpu(),), "distribution": (0.5, 0.5), "requests_per_second": 10.0}
    return MixProblem(**{**fields, **changes})


@pytest.mark.parametrize(
    ("bad", "field", "words"),
    [
        (problem(gpus=(gpu(), gpu("L4", max_rps=(1.0,)))), "gpus.L4.maxRequestsPerSecond", ["L4", "2"]),
        (problem(gpus=(gpu(price_per_hour=-1.0),)), "gpus.H100.pricePerHour", ["negative"]),
        (problem(gpus=(gpu(max_rps=(10.0, -5.0)),)), "gpus.H100.maxRequestsPerSecond", ["negative"]),
        (problem(gpus=(gpu(available=-1),)), "gpus.H100.available", ["negative"]),
        (problem(requests_per_second=-3.0), "workload.requestsPerSecond", ["negative"]),
        (problem(distribution=(0.5, 0.6)), "workload.distribution", ["sum to 1.1"]),
        (problem(distribution=(1.5, -0.5)), "workload.distribution", ["negative"]),
        (problem(slice_factor=0), "sliceFactor", ["0"]),
        (problem(power_budget_watts=1000.0), "gpus.H100.powerWatts", ["power budget"]),
        (problem(gpus=(gpu(max_rps=(10.0, 0.0)),)), "workload.distribution", ["bucket 1", "no GPU type"]),
        (problem(gpus=(gpu(), gpu())), "gpus.H100", ["twice"]),
        (problem(gpus=()), "gpus", ["no GPU types"]),
        (problem(requests_per_second=float("nan")), "workload.requestsPerSecond", ["nan"]),
    ],
)
def test_invalid_input_names_the_field_and_the_fix(bad, field, words):
    for call in (validate, solve, solve_greedy):
        with pytest.raises(MixError) as excinfo:
            call(bad)
        assert excinfo.value.field == field
        assert excinfo.value.fix
        for word in words:
            assert word in excinfo.value.message
        assert str(excinfo.value).startswith(f"{field}: ")


def test_an_unservable_bucket_is_named_by_its_row_and_column_when_the_shape_is_known():
    bad = problem(gpus=(gpu(max_rps=(10.0, 0.0)),), bucket_shape=(1, 2))
    with pytest.raises(MixError, match=r"bucket 1 \(input bucket 0, output bucket 1\)"):
        solve(bad)


# --- fallbacks and time limits ----------------------------------------------------------------


def test_a_failing_highs_falls_back_to_greedy(monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("HiGHS crashed")

    monkeypatch.setattr(mixsolver, "milp", boom)
    solution = solve(two_buckets(), enumeration_limit=0)
    assert solution.solver == "greedy" and not solution.optimal
    check_feasible(two_buckets(), solution)


def test_a_time_limit_without_a_solution_falls_back_to_greedy(monkeypatch):
    monkeypatch.setattr(mixsolver, "milp", lambda *a, **k: SimpleNamespace(x=None, status=1, fun=None))
    solution = solve(two_buckets(slice_factor=2), enumeration_limit=0)
    assert solution.solver == "greedy" and not solution.optimal
    check_feasible(two_buckets(slice_factor=2), solution)


def test_a_time_limit_with_a_solution_keeps_it_but_does_not_claim_optimality(monkeypatch):
    real = mixsolver.milp
    limits = []

    def stopped_early(*args, **kwargs):
        limits.append(kwargs["options"]["time_limit"])
        result = real(*args, **kwargs)
        return SimpleNamespace(x=result.x, status=1, fun=result.fun)

    monkeypatch.setattr(mixsolver, "milp", stopped_early)
    solution = solve(two_buckets(), time_limit_s=2.0, enumeration_limit=0)
    assert solution.solver == "milp" and not solution.optimal
    assert solution.cost_per_hour == pytest.approx(5.0)
    assert 0 < limits[0] <= 2.0 * (1 - mixsolver.RESERVE_SHARE)


def test_a_time_limited_partial_solve_still_serves_the_most(monkeypatch):
    real = mixsolver.milp
    calls = []

    def second_pass_finds_nothing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            return SimpleNamespace(x=None, status=1, fun=None)
        return real(*args, **kwargs)

    monkeypatch.setattr(mixsolver, "milp", second_pass_finds_nothing)
    limited = MixProblem((GpuOption("A", 1.0, (10.0,), available=2),), (1.0,), 50.0, slice_factor=5)
    solution = solve(limited)
    assert len(calls) == 3
    assert not solution.optimal
    assert solution.served_rps == pytest.approx(20.0)


# --- size -----------------------------------------------------------------------------------


def large_problem(seed: int = 1) -> MixProblem:
    """8 types × (8 × 8 buckets), shaped like measured profiles: rates fall with length and
    small GPUs cannot serve the longest buckets at all."""
    rng = random.Random(seed)
    gpus = []
    for g in range(8):
        speed = rng.uniform(0.5, 8)
        memory = rng.uniform(0.3, 1.0)
        rates = []
        for row in range(8):
            for col in range(8):
                size = 2**row * 2**col / 64
                rate = 0.0 if size > memory * 40 else speed * 20 / (1 + 3 * size)
                rates.append(round(rate * rng.uniform(0.8, 1.2), 3))
        gpus.append(GpuOption(f"T{g}", round(speed * rng.uniform(0.4, 1.2), 2), tuple(rates)))
    weights = [rng.random() ** 2 if any(g.max_rps[b] for g in gpus) else 0.0 for b in range(64)]
    total = sum(weights)
    return MixProblem(tuple(gpus), tuple(w / total for w in weights), 100.0, 4, bucket_shape=(8, 8))


def test_eight_types_by_64_buckets_by_slice_factor_4_solves_within_its_time_limit():
    """A sanity bound only; the benchmark checks the real target (< 1 s)."""
    problem = large_problem()
    start = time.perf_counter()
    solution = solve(problem)
    elapsed = time.perf_counter() - start
    print(f"8 types × 64 buckets × slice factor 4: {elapsed:.3f} s, optimal={solution.optimal}")
    assert elapsed < 5.0
    assert solution.solver == "milp"
    check_feasible(problem, solution)
    assert solution.cost_per_hour <= solve_greedy(problem).cost_per_hour + 1e-9


# --- the plan mix input format --------------------------------------------------------------


def document(**changes) -> dict:
    data = {
        "gpus": {
            "L4": {"pricePerHour": 0.8, "maxRequestsPerSecond": [[6.0, 2.0], [1.5, 0.0]], "available": 8},
            "H100": {"pricePerHour": 4.0, "maxRequestsPerSecond": [[30.0, 12.0], [10.0, 4.0]]},
        },
        "workload": {"distribution": [[0.5, 0.2], [0.2, 0.1]], "requestsPerSecond": 20.0},
    }
    return {**data, **changes}


def test_problem_from_json_flattens_row_major_and_defaults_the_slice_factor():
    parsed = problem_from_json(document())
    assert parsed.slice_factor == 4
    assert parsed.bucket_shape == (2, 2)
    assert parsed.distribution == (0.5, 0.2, 0.2, 0.1)
    assert parsed.gpus[0] == GpuOption("L4", 0.8, (6.0, 2.0, 1.5, 0.0), available=8)
    assert parsed.gpus[1].available is None and parsed.power_budget_watts is None
    solution = solve(parsed)
    assert set(solution.to_dict()) == {
        "counts",
        "costPerHour",
        "assignment",
        "solver",
        "optimal",
        "servedRequestsPerSecond",
        "powerWatts",
        "shortfall",
    }
    assert set(solution.to_dict()["assignment"][0]) == {"bucket", "slice", "gpu", "requestsPerSecond"}


def without(data: dict, *path: str) -> dict:
    node = data
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return data


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        (without(document(), "gpus", "H100", "pricePerHour"), "gpus.H100.pricePerHour", ["required"]),
        (
            document(gpus={"H100": {"pricePerHour": 4.0, "maxRequestsPerSecond": [[1.0, 2.0, 3.0]]}}),
            "gpus.H100.maxRequestsPerSecond",
            ["H100", "1×3", "2×2"],
        ),
        (
            document(gpus={"H100": {"pricePerHour": 4.0, "maxRequestsPerSecond": [[1.0, 2.0], [3.0]]}}),
            "gpus.H100.maxRequestsPerSecond",
            ["ragged"],
        ),
        (
            document(gpus={"H100": {"pricePerHour": 4.0, "maxRequestsPerSecond": [[1.0, "x"], [3.0, 1.0]]}}),
            "gpus.H100.maxRequestsPerSecond.0.1",
            ["number"],
        ),
        (
            document(gpus={"H100": {"pricePerHour": -4.0, "maxRequestsPerSecond": [[1.0]]}}),
            "gpus.H100.pricePerHour",
            ["0"],
        ),
        (document(gpus={}), "gpus", ["at least 1"]),
        (document(sliceFactor=0), "sliceFactor", ["1"]),
        (document(colour="red"), "colour", ["unknown field"]),
        (
            document(workload={"distribution": [[1.0]], "requestsPerSecond": 1, "burst": 2}),
            "workload.burst",
            ["unknown"],
        ),
        (
            document(workload={"distribution": [], "requestsPerSecond": 1}),
            "workload.distribution",
            ["non-empty"],
        ),
        (document(powerBudgetWatts=1000), "gpus.L4.powerWatts", ["power budget"]),
        (["not", "a", "mapping"], "input", ["mapping"]),
    ],
)
def test_problem_from_json_errors_name_the_field_path(data, field, words):
    with pytest.raises(MixError) as excinfo:
        problem_from_json(data)
    assert excinfo.value.field == field
    assert excinfo.value.fix
    for word in words:
        assert word in excinfo.value.message


def test_an_unknown_gpu_field_lists_the_allowed_ones():
    data = document()
    data["gpus"]["H100"]["memoryGiB"] = 80
    with pytest.raises(MixError) as excinfo:
        problem_from_json(data)
    assert excinfo.value.field == "gpus.H100.memoryGiB"
    assert "pricePerHour, maxRequestsPerSecond, available, powerWatts" in excinfo.value.fix
