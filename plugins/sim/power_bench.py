"""``flotilla bench powercap``: how many serving servers fit under one power budget.

Provisioning at nameplate gives ``budget_servers - training_servers`` serving servers and
never needs a cap. Oversubscribing puts more serving servers under the same budget and
relies on a powercap plugin to keep the draw within it; each count is simulated as a closed
loop around the real plugin (:mod:`plugins.sim.power_loop`).

A count of servers *fits* when, against the same servers uncapped (policy ``none``),
``polca`` loses at most ``max_loss`` of SLO attainment, keeps the critical Deployment's P99
TTFT and end-to-end latency within ``p99_tolerance``, and spends no second over budget --
the issue's three conditions. The bench bisects for the largest count that fits and
reports it, and the +30% goal count, beside nameplate provisioning, the same servers
uncapped, and the ``static`` plugin.
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from plugins.sim.power import power_model
from plugins.sim.power_loop import (
    POLICIES,
    PowerSim,
    Settings,
    Workload,
    budget_watts,
    plugin,
)


def _compare(run: dict[str, Any], uncapped: dict[str, Any]) -> dict[str, Any]:
    """``run`` against the same servers uncapped: attainment lost, critical P99 ratios."""

    def ratio(key: str) -> float | None:
        a, b = run[key], uncapped[key]
        return round(a / b, 4) if a is not None and b else None

    return {
        "sloLoss": round(uncapped["sloAttainment"] - run["sloAttainment"], 5),
        "criticalP99TtftVsUncapped": ratio("criticalP99TtftMs"),
        "criticalP99E2eVsUncapped": ratio("criticalP99E2eMs"),
        "normalP99TtftVsUncapped": ratio("normalP99TtftMs"),
    }


def run_bench(settings: Settings, progress: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Nameplate provisioning, then the largest oversubscribed count ``polca`` holds; every
    policy at that count, side by side. Returns the report (``cli.bench_powercap`` prints it)."""
    settings.check()
    for policy in POLICIES:
        plugin(settings, policy)  # refuse bad parameters before any simulation
    started = time.perf_counter()
    workload = Workload.build(settings)
    runs: dict[tuple[str, int], dict[str, Any]] = {}

    def run(policy: str, servers: int) -> dict[str, Any]:
        if (policy, servers) not in runs:
            result = PowerSim(settings, policy, servers, workload).run()
            runs[(policy, servers)] = result
            progress(
                f"{policy:>6} with {servers:>3} serving servers: attainment {result['sloAttainment']:.4f}, "
                f"{result['secondsOverBudget']:g} s over budget, peak {result['peakDrawShare']:.0%} "
                f"of budget ({result['wallSeconds']} s)"
            )
        return runs[(policy, servers)]

    search: list[dict[str, Any]] = []

    def fits(servers: int) -> bool:
        uncapped, polca = run("none", servers), run("polca", servers)
        compared = _compare(polca, uncapped)
        ok = all(_verdicts(settings, {**polca, **compared}).values())
        over = polca["secondsOverBudget"]
        search.append({"servers": servers, "fits": ok, **compared, "secondsOverBudget": over})
        return ok

    nameplate = settings.nameplate_servers
    ceiling = max(nameplate, settings.max_servers or 3 * nameplate)
    goal = min(ceiling, math.ceil(nameplate * (1 + settings.goal_extra) - 1e-9))
    best = _largest_fitting(nameplate, goal, ceiling, fits)
    rows = [("nameplate", run("none", nameplate))]
    counts = [("goal", goal), ("largest fit", best)] if goal != best else [("goal and largest fit", best)]
    for label, servers in counts:
        if servers > nameplate:
            rows += [(label, run(policy, servers)) for policy in POLICIES]
    results = []
    for provisioning, result in rows:
        entry = {"provisioning": provisioning, **result}
        entry["extraServers"] = round(result["servers"] / nameplate - 1, 4)
        if provisioning != "nameplate":
            entry.update(_compare(result, runs[("none", result["servers"])]))
        results.append(entry)
    polca = {**run("polca", best), **_compare(run("polca", best), run("none", best))}
    return {
        "bench": "powercap",
        "settings": {**asdict(settings), "nameplateServers": nameplate},
        "budgetWatts": budget_watts(settings),
        "model": _model_figures(settings, workload),
        "machine": {
            "cpuCores": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "simulationOnly": True,
        },
        "results": results,
        "search": search,
        "goals": {
            **_goals(settings, polca, best),
            "searchCeiling": ceiling,
            "ceilingReached": best == ceiling,
        },
        "limits": LIMITS,
        "wallSeconds": round(time.perf_counter() - started, 1),
    }


def _largest_fitting(nameplate: int, goal: int, ceiling: int, fits: Callable[[int], bool]) -> int:
    """The largest count in (nameplate, ceiling] that fits, by bisection (fitting is taken to be
    monotone in the count): the goal first, then the ceiling or below the goal. Nameplate, which
    never needs a cap, is the answer when nothing above it fits."""
    if goal <= nameplate:
        return nameplate
    if fits(goal):
        good, bad = goal, ceiling + 1
        if ceiling > goal:
            if fits(ceiling):
                return ceiling
            bad = ceiling
    else:
        good, bad = nameplate, goal
    while bad - good > 1:
        middle = (good + bad) // 2
        if fits(middle):
            good = middle
        else:
            bad = middle
    return good


def _verdicts(settings: Settings, run: dict[str, Any]) -> dict[str, bool]:
    """The three conditions a count must meet to fit; ``run`` carries its comparison with the
    same servers uncapped. A P99 that falls on a rejected request (None) fails."""
    ceiling = 1 + settings.p99_tolerance + 1e-9
    ttft, e2e = run["criticalP99TtftVsUncapped"], run["criticalP99E2eVsUncapped"]
    p99 = ttft is not None and e2e is not None and ttft <= ceiling and e2e <= ceiling
    return {
        "sloLossMet": run["sloLoss"] <= settings.max_loss + 1e-12,
        "criticalP99Met": p99 or run["criticalRequests"] == 0,
        "violationsMet": run["secondsOverBudget"] == 0,
    }


def _goals(settings: Settings, polca: dict[str, Any], best: int) -> dict[str, Any]:
    extra = best / settings.nameplate_servers - 1
    return {
        "polcaServers": best,
        "extraServers": round(extra, 4),
        "extraServersMet": extra >= settings.goal_extra - 1e-9,
        "sloLoss": polca["sloLoss"],
        "criticalP99TtftVsUncapped": polca["criticalP99TtftVsUncapped"],
        "criticalP99E2eVsUncapped": polca["criticalP99E2eVsUncapped"],
        "secondsOverBudget": polca["secondsOverBudget"],
        **_verdicts(settings, polca),
    }


def _model_figures(settings: Settings, workload: Workload) -> dict[str, Any]:
    model = power_model(settings.gpu_type)
    return {
        "gpuType": settings.gpu_type,
        "tdpWatts": model.tdp_watts,
        "minLimitWatts": model.min_watts,
        "drawShares": {
            "idle": model.idle,
            "prefill": model.prefill,
            "decodeOneRow": model.decode_one,
            "decodeFull": model.decode_full,
            "train": model.train,
        },
        "serving": f"{settings.model} on {settings.gpus_per_server}x{settings.gpu_type} (estimated roofline "
        "profile, paged attention)",
        "trace": os.path.basename(settings.trace),
        "interArrivalCv": round(workload.cv, 3),
        "requestLengthsMean": [
            round(sum(i for i, _ in workload.lengths) / len(workload.lengths), 1),
            round(sum(o for _, o in workload.lengths) / len(workload.lengths), 1),
        ],
    }


LIMITS = [
    "simulation only: no GPU was capped; every power figure comes from plugins/sim/power.py, whose "
    "phase draws (prefill 0.95, decode 0.40-0.65, training 0.90 of TDP) are estimates read off "
    "Splitwise and POLCA, not measurements",
    "the serving profile is the roofline estimate of Llama-3-70B, not a measured one",
    "GPU power only: the budget and the draw leave out CPUs, fans and networking",
    "the draw is a per-second mean; a cap is assumed to bind within the second (NVIDIA's power "
    "limiter reacts in milliseconds), and power spikes shorter than a second are not modelled",
    "arrivals are Gamma with the BurstGPT sample's burstiness and lengths over a compressed day, "
    "not a production trace; both Deployments peak together",
    "the training job draws a constant 90% of TDP; real training swings between compute and "
    "communication phases",
]
