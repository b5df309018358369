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

from plugins.binpack import Binpack, BinpackParams
from plugins.distserve import DistServe, DistServeParams, colocated_goodput
from plugins.melange import Melange, MelangeParams
from plugins.mixsolver import GpuOption, MixProblem, solve
from plugins.planning import PlanProblem, colocated_plan, demand_of, profile_for
from plugins.sim import DEFAULT_BUCKETS, HARDWARE, SHAPES, mixed_80_20, short_chat, summarisation
from plugins.types import FleetView, Gpu, NodeView, PlacementRequest

LLAMA_8B = SHAPES["llama-3-8b"].to_config()
DEFAULT_TYPES = "H100,A100-80GB,L40S,L4,A10G"
# (name, trace generator, requests/s, TTFT ms, TPOT ms): long prompts get a looser TTFT.
WORKLOADS = [
    ("short chat", short_chat, 100.0, 1000.0, 100.0),
    ("summarisation", summarisation, 20.0, 5000.0, 100.0),
    ("80/20 mix", mixed_80_20, 50.0, 3000.0, 100.0),
]
# The papers' headline ranges, printed beside what this run measured.
MELANGE_PAPER = "Mélange: 9-77% lower cost than the best single GPU type at the same SLO"
DISTSERVE_PAPER = "DistServe: up to 4.48x more requests (goodput) within the SLO"


def add_parser(benches: Any) -> None:
    parser = benches.add_parser("schedulers", help="melange/distserve vs single types, binpack and colocated")
    parser.add_argument("--gpu-types", default=DEFAULT_TYPES, help="comma-separated GPU types")
    parser.add_argument("--gpus-per-type", type=int, default=64, help="free GPUs of each type in the fleet")
    parser.add_argument("--rate-scale", type=float, default=1.0, help="multiply every workload's rate")
    parser.add_argument("--workloads", help="comma-separated subset: chat,summarisation,mix")
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
    return PlacementRequest("Deployment", "bench", replicas, gpu_types=gpu_types or [], spec=spec)


def row(policy: str, plan_dict: dict[str, Any]) -> dict[str, Any]:
    return {
        "policy": policy,
        "replicas": plan_dict.get("replicas", {}),
        "costPerHour": plan_dict.get("costPerHour"),
        "sloAttainment": (plan_dict.get("predicted") or {}).get("sloAttainment"),
        "note": plan_dict.get("shortfall") or plan_dict.get("problem") or "",
    }


def bench_workload(name, generator, rate, ttft, tpot, types, per_type, with_distserve) -> dict[str, Any]:
    requests = generator(rate, 120.0, seed=1)
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


def goodput_comparison(requests, rate, ttft, tpot, types, per_type) -> dict[str, Any]:
    """Per-GPU goodput: the best colocated replica type vs the distserve plan."""
    spec = spec_for(requests, rate, ttft, tpot, disaggregation="auto")
    demand = demand_of(spec)
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
    keys = {"chat": "short chat", "summarisation": "summarisation", "mix": "80/20 mix"}
    wanted = {keys.get(w.strip(), w.strip()) for w in args.workloads.split(",")} if args.workloads else None
    results = []
    for name, generator, rate, ttft, tpot in WORKLOADS:
        if wanted and name not in wanted:
            continue
        print(f"[{name}] planning ...", file=sys.stderr)
        results.append(
            bench_workload(
                name,
                generator,
                rate * args.rate_scale,
                ttft,
                tpot,
                types,
                args.gpus_per_type,
                not args.no_distserve,
            )
        )
    timing = solve_timing()
    document = {"model": "llama-3-8b (estimated profiles)", "workloads": results, "melangeSolve": timing}
    print(render(document))
    print(json.dumps(document, indent=2))
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(document, f, indent=2)
    return 0


def render(document: dict[str, Any]) -> str:
    lines = []
    for result in document["workloads"]:
        slo = result["slo"]
        lines.append(
            f"\n{result['workload']}: {result['requestsPerSecond']:g} req/s, "
            f"SLO TTFT {slo['ttftMs']:g} ms / TPOT {slo['tpotMs']:g} ms (P90 attainment >= 90%)"
        )
        lines.append(f"  {'POLICY':<18} {'GPUS':<34} {'COST/H':>9} {'SLO MET':>8}  NOTE")
        for r in result["rows"]:
            gpus = ", ".join(f"{n}x{t}" for t, n in sorted(r["replicas"].items())) or "-"
            cost = f"${r['costPerHour']:.2f}" if r["costPerHour"] is not None else "-"
            met = f"{r['sloAttainment'] * 100:.1f}%" if r["sloAttainment"] is not None else "-"
            lines.append(f"  {r['policy']:<18} {gpus:<34} {cost:>9} {met:>8}  {r['note'][:70]}")
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
