"""``flotilla bench schedulers``: the research schedulers against their baselines, side by side.

All figures come from the serving simulator (``plugins/sim``) on the roofline
``estimated`` profiles of a Llama-3-8B shape, with GPU prices from the built-in
hardware table (typical on-demand prices, marked as estimates). For each
workload it reports:

- cost per hour and predicted SLO attainment of each single-GPU-type allocation
  (the cheapest count of that type alone that carries the rate: Mélange's baseline),
  of ``binpack`` given the replica count of the cheapest single type (an operator
  who sized by rule of thumb and let best-fit choose the GPUs), and of ``melange``;
- goodput per GPU of the best colocated replica against the ``distserve`` plan.

With ``--trace`` a BurstGPT CSV is a fourth workload: the schedulers size for its mean
rate and length histogram exactly as for the synthetic ones, and then every allocation is
also replayed on the trace's own arrival times and lengths, and on the same requests arriving
as a Poisson stream: the planners predict on Poisson arrivals, and the two replays separate
what the bursts cost from what the planners' model of the traffic misses. Loading and
replaying a trace is the simulator's (``plugins.sim.trace``); the router is here.

No database and no server: the schedulers are called as plugins on a FleetView.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from typing import Any

import numpy as np
from scipy.optimize import linprog

from common.specs import DeploymentSpec
from plugins.binpack import Binpack, BinpackParams
from plugins.distserve import DistServe, DistServeParams, colocated_goodput
from plugins.melange import Melange, MelangeParams
from plugins.mixsolver import GpuOption, MixProblem, solve
from plugins.planning import Demand, PlanProblem, bucket_rate, colocated_plan, demand_of, profile_for
from plugins.sim import (
    DEFAULT_BUCKETS,
    HARDWARE,
    SHAPES,
    GpuProfile,
    Request,
    Trace,
    TraceError,
    load_trace,
    mixed_80_20,
    replay,
    short_chat,
    summarisation,
    with_poisson_arrivals,
)
from plugins.sim.trace import SAMPLE_TRACE
from plugins.types import FleetView, Gpu, NodeView, PlacementRequest

LLAMA_8B = SHAPES["llama-3-8b"].to_config()
DEFAULT_TYPES = "H100,A100-80GB,L40S,L4,A10G"
# (name, trace generator, requests/s, TTFT ms, TPOT ms): long prompts get a looser TTFT.
WORKLOADS = [
    ("short chat", short_chat, 100.0, 1000.0, 100.0),
    ("summarisation", summarisation, 20.0, 5000.0, 100.0),
    ("80/20 mix", mixed_80_20, 50.0, 3000.0, 100.0),
]
# A replayed trace mixes short chat turns with long prompts, as the 80/20 mix does: its SLO.
TRACE_SLO = (3000.0, 100.0)
WORKLOAD_KEYS = {"chat": "short chat", "summarisation": "summarisation", "mix": "80/20 mix", "trace": "trace"}
# The papers' headline ranges, printed beside what this run measured.
MELANGE_PAPER = "Mélange: 9-77% lower cost than the best single GPU type at the same SLO"
DISTSERVE_PAPER = "DistServe: up to 4.48x more requests (goodput) within the SLO"


def add_parser(benches: Any) -> None:
    parser = benches.add_parser("schedulers", help="melange/distserve vs single types, binpack and colocated")
    parser.add_argument("--gpu-types", default=DEFAULT_TYPES, help="comma-separated GPU types")
    parser.add_argument("--gpus-per-type", type=int, default=64, help="free GPUs of each type in the fleet")
    parser.add_argument("--rate-scale", type=float, default=1.0, help="multiply every workload's rate")
    parser.add_argument("--workloads", help="comma-separated subset: chat,summarisation,mix,trace")
    parser.add_argument(
        "--trace",
        metavar="FILE.csv",
        help=f"also replay a BurstGPT CSV (e.g. {SAMPLE_TRACE}); --rate-scale does not apply to it",
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="multiply the trace's timestamps (0.5 replays it twice as fast)",
    )
    parser.add_argument(
        "--trace-model", metavar="NAME", help="keep only the trace's rows of this Model (e.g. GPT-4)"
    )
    parser.add_argument("--no-distserve", action="store_true", help="skip the (slower) disaggregation search")
    parser.add_argument("--json", dest="json_path", help="also write the JSON result here")
    parser.set_defaults(handler=run)


def fleet_of(types: list[str], per_type: int) -> FleetView:
    nodes = []
    for gpu_type in types:
        memory = int(HARDWARE[gpu_type].memory_gib * 1024)
        for n in range(math.ceil(per_type / 8)):
            gpus = [Gpu(index=i, type=gpu_type, memory_mib=memory) for i in range(min(8, per_type - 8 * n))]
            nodes.append(NodeView(f"{gpu_type.lower()}-{n}", None, {}, True, True, gpus))
    return FleetView(nodes, prices={t: HARDWARE[t].price_per_hour for t in types})


def spec_for(requests: list, rate: float, ttft: float, tpot: float, disaggregation: str = "off") -> dict:
    fractions = DEFAULT_BUCKETS.histogram(requests)
    cols = len(DEFAULT_BUCKETS.output_edges)
    return {
        "model": {"source": "builtin:tiny-llama", "config": LLAMA_8B},
        "workload": {
            "requestsPerSecond": rate,
            "histogram": {
                "inputEdges": list(DEFAULT_BUCKETS.input_edges),
                "outputEdges": list(DEFAULT_BUCKETS.output_edges),
                "fractions": [fractions[i : i + cols] for i in range(0, len(fractions), cols)],
            },
        },
        "slo": {"ttftMs": ttft, "tpotMs": tpot},
        "disaggregation": disaggregation,
    }


def request_for(spec: dict, replicas: int = 1, gpu_types: list[str] | None = None) -> PlacementRequest:
    deployment = DeploymentSpec.model_validate(spec)
    return PlacementRequest("Deployment", "bench", replicas, gpu_types=gpu_types or [], deployment=deployment)


def row(policy: str, plan_dict: dict[str, Any]) -> dict[str, Any]:
    return {
        "policy": policy,
        "replicas": plan_dict.get("replicas", {}),
        "costPerHour": plan_dict.get("costPerHour"),
        "sloAttainment": (plan_dict.get("predicted") or {}).get("sloAttainment"),
        "note": plan_dict.get("shortfall") or plan_dict.get("problem") or "",
    }


def bench_workload(
    name: str,
    requests: list[Request],
    rate: float,
    ttft: float,
    tpot: float,
    types: list[str],
    per_type: int,
    with_distserve: bool,
    replay_requests: bool = False,
) -> dict[str, Any]:
    """Size every policy for ``requests``' histogram at ``rate``; with ``replay_requests`` also
    serve those very requests (their own arrival times) on each allocation."""
    spec = spec_for(requests, rate, ttft, tpot)
    fleet = fleet_of(types, per_type)
    started = time.perf_counter()
    rows = []
    for gpu_type in types:
        try:
            plan = Melange().plan(
                request=request_for(spec, gpu_types=[gpu_type]), fleet=fleet, params=MelangeParams()
            )
            rows.append(row(f"only {gpu_type}", plan.to_dict()))
        except PlanProblem as exc:
            rows.append(row(f"only {gpu_type}", {"problem": f"cannot meet the SLO ({exc})"}))
    singles = [r for r in rows if r["costPerHour"] and not r["note"]]
    cheapest = min(singles, key=lambda r: r["costPerHour"]) if singles else None
    if cheapest:
        replicas = sum(cheapest["replicas"].values())
        plan = colocated_plan(
            "binpack", Binpack(), BinpackParams(), request_for(spec, replicas), fleet_of(types, per_type)
        )
        rows.append(row("binpack", plan.to_dict()))
    melange = Melange().plan(request=request_for(spec), fleet=fleet, params=MelangeParams()).to_dict()
    rows.append(row("melange", melange))
    if replay_requests:
        demand = demand_of(DeploymentSpec.model_validate(spec))
        smoothed = with_poisson_arrivals(requests)
        for r in rows:
            if r["replicas"]:
                r["replayPoisson"] = replay_allocation(smoothed, r["replicas"], demand, fleet)
                r["replay"] = replay_allocation(requests, r["replicas"], demand, fleet)
    result: dict[str, Any] = {
        "workload": name,
        "requestsPerSecond": rate,
        "slo": {"ttftMs": ttft, "tpotMs": tpot},
        "rows": rows,
        "melangeSavingsVsSingle": {
            r["policy"].removeprefix("only "): round(1 - melange["costPerHour"] / r["costPerHour"], 4)
            for r in singles
        },
        "melangeSavingsVsBestSingle": round(1 - melange["costPerHour"] / cheapest["costPerHour"], 4)
        if cheapest
        else None,
    }
    if with_distserve:
        result["goodput"] = goodput_comparison(requests, rate, ttft, tpot, types, per_type)
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result


def replay_allocation(
    requests: list[Request], replicas: dict[str, int], demand: Demand, fleet: FleetView
) -> dict[str, Any]:
    """Serve the trace's own requests on ``replicas`` (type → count) with the profiles the
    planners use, each request to a type by :func:`balanced_routing`. Requests for a type
    without a profile count as misses."""
    profiles = {t: p for t, n in replicas.items() if n > 0 and (p := profile_for(t, demand, fleet))}
    routing = balanced_routing({t: replicas[t] for t in profiles}, profiles, demand)
    return replay(requests, replicas, profiles, routing, demand.buckets, demand.slo)


def balanced_routing(
    replicas: dict[str, int], profiles: dict[str, GpuProfile], demand: Demand
) -> dict[str, list[float]]:
    """Each type's share of every bucket: the split that keeps the busiest type least busy
    (a small LP on each type's per-bucket capacity at the SLO, as Mélange measures it).

    The same router for every allocation, so that replays compare GPUs rather than routers
    (a plan does not carry the routing it was predicted with). A bucket no type serves at
    the SLO still has to go somewhere: it is split by replica count.
    """
    types = sorted(replicas)
    buckets = [b for b, f in enumerate(demand.fractions) if f > 0]
    routing = {t: [0.0] * len(demand.fractions) for t in types}
    pairs = [
        (t, b, rate) for t in types for b in buckets if (rate := bucket_rate(profiles[t], demand, b)) > 0
    ]
    served = sorted({b for _, b, _ in pairs})
    for b in set(buckets) - set(served):
        for t in types:
            routing[t][b] = replicas[t] / sum(replicas.values())
    if not pairs:
        return routing
    # Variables: one share per (type, bucket) pair, then the busiest type's utilisation.
    busy = np.zeros((len(types), len(pairs) + 1))
    whole = np.zeros((len(served), len(pairs) + 1))
    for j, (t, b, rate) in enumerate(pairs):
        busy[types.index(t), j] = demand.rate * demand.fractions[b] / (replicas[t] * rate)
        whole[served.index(b), j] = 1.0
    busy[:, -1] = -1.0
    objective = np.zeros(len(pairs) + 1)
    objective[-1] = 1.0
    lp = linprog(
        objective, A_ub=busy, b_ub=np.zeros(len(types)), A_eq=whole, b_eq=np.ones(len(served)), method="highs"
    )
    for j, (t, b, _) in enumerate(pairs):
        routing[t][b] = float(lp.x[j])
    return routing


def goodput_comparison(requests, rate, ttft, tpot, types, per_type) -> dict[str, Any]:
    """Per-GPU goodput: the best colocated replica type vs the distserve plan."""
    spec = spec_for(requests, rate, ttft, tpot, disaggregation="auto")
    demand = demand_of(DeploymentSpec.model_validate(spec))
    fleet = fleet_of(types, per_type)
    colocated = {}
    for gpu_type in types:
        profile = profile_for(gpu_type, demand, fleet)
        colocated[gpu_type] = round(colocated_goodput(profile, demand), 3) if profile else 0.0
    best_type = max(colocated, key=colocated.get)
    try:
        plan = DistServe().plan(request=request_for(spec), fleet=fleet, params=DistServeParams()).to_dict()
    except PlanProblem as exc:
        return {"colocatedPerGpu": colocated, "distserve": {"problem": str(exc)}}
    per_gpu = plan["predicted"].get("goodputPerGpu", 0.0)
    return {
        "colocatedPerGpu": colocated,
        "bestColocated": {"gpuType": best_type, "goodputPerGpu": colocated[best_type]},
        "distserve": {"roles": plan["roles"], "goodputPerGpu": per_gpu, "predicted": plan["predicted"]},
        "ratio": round(per_gpu / colocated[best_type], 3) if colocated[best_type] else None,
    }


def solve_timing(
    types: int = 8, buckets: int = 64, slice_factor: int = 4, repeats: int = 3
) -> dict[str, Any]:
    """One Mélange solve at the issue's size (8 types x 64 buckets x slice factor 4)."""
    rng = random.Random(5)
    options = tuple(
        GpuOption(
            f"T{i}",
            round(rng.uniform(0.5, 6.0), 2),
            tuple(
                rng.choice([0.0, rng.uniform(0.2, 20.0)]) if b % 7 == 3 else rng.uniform(0.2, 20.0)
                for b in range(buckets)
            ),
        )
        for i in range(types)
    )
    weights = [rng.random() for _ in range(buckets)]
    distribution = tuple(w / sum(weights) for w in weights)
    problem = MixProblem(options, distribution, 50.0, slice_factor=slice_factor)
    times, solution = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        solution = solve(problem, time_limit_s=5.0)
        times.append(time.perf_counter() - started)
    return {
        "types": types,
        "buckets": buckets,
        "sliceFactor": slice_factor,
        "secondsMax": round(max(times), 3),
        "secondsMin": round(min(times), 3),
        "solver": solution.solver,
        "optimal": solution.optimal,
    }


def run(args: argparse.Namespace) -> int:
    types = [t.strip() for t in args.gpu_types.split(",") if t.strip()]
    unknown = [t for t in types if t not in HARDWARE]
    if unknown:
        print(f"error: unknown GPU types {unknown}; known: {', '.join(HARDWARE)}", file=sys.stderr)
        return 2
    keys = WORKLOAD_KEYS
    wanted = {keys.get(w.strip(), w.strip()) for w in args.workloads.split(",")} if args.workloads else None
    try:
        trace = trace_of(args, wanted)
    except TraceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results = []
    for name, generator, rate, ttft, tpot in WORKLOADS:
        if wanted and name not in wanted:
            continue
        print(f"[{name}] planning ...", file=sys.stderr)
        rate *= args.rate_scale
        requests = generator(rate, 120.0, seed=1)
        results.append(
            bench_workload(name, requests, rate, ttft, tpot, types, args.gpus_per_type, not args.no_distserve)
        )
    if trace is not None:
        print(f"[{trace.name}] planning and replaying {len(trace.requests)} requests ...", file=sys.stderr)
        result = bench_workload(
            trace.name,
            trace.requests,
            trace.rate,
            *TRACE_SLO,
            types,
            args.gpus_per_type,
            not args.no_distserve,
            replay_requests=True,
        )
        results.append({**result, "trace": trace.describe()})
    timing = solve_timing()
    document = {"model": "llama-3-8b (estimated profiles)", "workloads": results, "melangeSolve": timing}
    print(render(document))
    print(json.dumps(document, indent=2))
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(document, f, indent=2)
    return 0


def trace_of(args: argparse.Namespace, wanted: set[str] | None) -> Trace | None:
    """The ``--trace`` workload, None without one; TraceError for flags that do not go together."""
    if args.trace is None:
        if args.time_scale != 1.0 or args.trace_model is not None:
            raise TraceError("--time-scale and --trace-model apply to a trace: add --trace FILE.csv")
        if wanted and "trace" in wanted:
            raise TraceError(
                f"--workloads trace needs a trace to replay: add --trace FILE.csv (e.g. {SAMPLE_TRACE})"
            )
        return None
    return load_trace(args.trace, args.time_scale, args.trace_model)


def render(document: dict[str, Any]) -> str:
    lines = []
    for result in document["workloads"]:
        slo = result["slo"]
        slo_text = f"SLO TTFT {slo['ttftMs']:g} ms / TPOT {slo['tpotMs']:g} ms (P90 attainment >= 90%)"
        trace = result.get("trace")
        if trace:
            lines.append(f"\n{result['workload']}: {trace_label(trace)}, {slo_text}")
        else:
            lines.append(f"\n{result['workload']}: {result['requestsPerSecond']:g} req/s, {slo_text}")
        replayed = trace is not None
        extra = f" {'POISSON':>8} {'REPLAY':>8}" if replayed else ""
        lines.append(f"  {'POLICY':<18} {'GPUS':<34} {'COST/H':>9} {'SLO MET':>8}{extra}  NOTE")
        for r in result["rows"]:
            gpus = ", ".join(f"{n}x{t}" for t, n in sorted(r["replicas"].items())) or "-"
            cost = f"${r['costPerHour']:.2f}" if r["costPerHour"] is not None else "-"
            met = percent(r["sloAttainment"])
            extra = "".join(
                f" {percent((r.get(key) or {}).get('sloAttainment')):>8}"
                for key in (("replayPoisson", "replay") if replayed else ())
            )
            lines.append(f"  {r['policy']:<18} {gpus:<34} {cost:>9} {met:>8}{extra}  {r['note'][:70]}")
        if replayed:
            lines.append(
                "  SLO MET: the planners' prediction; POISSON: the trace's lengths arriving as a Poisson "
                "stream at its mean rate; REPLAY: the trace's own arrivals and lengths"
            )
        if result["melangeSavingsVsBestSingle"] is not None:
            per_type = ", ".join(f"{t} {s * 100:.0f}%" for t, s in result["melangeSavingsVsSingle"].items())
            lines.append(
                f"  melange saves {result['melangeSavingsVsBestSingle'] * 100:.1f}% vs the best single type "
                f"({per_type})"
            )
        goodput = result.get("goodput")
        if goodput and "ratio" in goodput:
            best = goodput["bestColocated"]
            roles = ", ".join(
                f"{role} {r['instances']}x{r['gpuType']} tp{r['tensorParallel']}"
                for role, r in goodput["distserve"]["roles"].items()
            )
            lines.append(
                f"  goodput/GPU: colocated {best['gpuType']} {best['goodputPerGpu']:.2f} req/s; distserve "
                f"({roles}) {goodput['distserve']['goodputPerGpu']:.2f} req/s = {goodput['ratio']:.2f}x"
            )
    timing = document["melangeSolve"]
    lines.append(
        f"\nmelange solve, {timing['types']} types x {timing['buckets']} buckets x slice factor "
        f"{timing['sliceFactor']}: {timing['secondsMax']:.3f} s worst of 3 ({timing['solver']}, "
        f"optimal={timing['optimal']})"
    )
    lines.append(f"papers: {MELANGE_PAPER}; {DISTSERVE_PAPER}")
    return "\n".join(lines)


def percent(share: float | None) -> str:
    return f"{share * 100:.1f}%" if share is not None else "-"


def trace_label(trace: dict[str, Any]) -> str:
    """What the trace group is: its size, length, mean rate and burstiness."""
    scope = [f"Model {trace['model']}"] if trace.get("model") else []
    if trace.get("timeScale", 1.0) != 1.0:
        scope.append(f"time x{trace['timeScale']:g}")
    return (
        f"{trace['requests']} requests{' (' + ', '.join(scope) + ')' if scope else ''} over "
        f"{trace['durationS']:.1f} s = {trace['requestsPerSecond']:.2f} req/s mean, "
        f"inter-arrival CV {trace['interArrivalCv']:.2f} (Poisson: 1)"
    )
