"""``flotilla bench powercap``: the flags, the table and the JSON of the power-cap bench.

The bench is :mod:`plugins.sim.power_bench` (pure Python, no server); the ``Settings`` of
:mod:`plugins.sim.power_loop` hold the defaults the flags show.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

DEFAULT_TRACE = "examples/traces/burstgpt-sample.csv"


def _params(flag: str) -> Any:
    def parse(text: str) -> dict[str, Any]:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            example = '{"capThreshold": 0.8}'
            raise argparse.ArgumentTypeError(
                f"{flag} must be a JSON object, e.g. '{example}': {exc}"
            ) from None
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(f"{flag} must be a JSON object, got {text!r}")
        return value

    return parse


def settings_of(args: argparse.Namespace) -> Any:
    from plugins.sim.power_loop import Settings, quick_settings

    given = {"polca": args.polca_params, "static": args.static_params}
    params = {name: value for name, value in given.items() if value}
    settings = Settings(
        gpu_type=args.gpu_type, model=args.model, gpus_per_server=args.gpus_per_server,
        budget_servers=args.budget_servers, training_servers=args.training_servers,
        duration_s=args.duration, warmup_s=args.warmup, interval_s=args.interval, peak_rate=args.peak_rate,
        trough_share=args.trough_share, cv=args.cv, critical_share=args.critical_share,
        ttft_ms=args.slo_ttft_ms, tpot_ms=args.slo_tpot_ms, max_loss=args.max_loss,
        max_servers=args.max_servers, trace=args.trace, seed=args.seed, params=params,
    )  # fmt: skip
    return quick_settings(settings) if args.quick else settings


def _pct(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value * 100:.{digits}f}%"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}x"


def _ms(value: float | None) -> str:
    return "inf" if value is None else f"{value:,.0f}"


def format_table(report: dict[str, Any]) -> str:
    from cli.output import table

    rows = []
    for r in report["results"]:
        capped = r["cappedGpuSeconds"]
        loss = "-" if "sloLoss" not in r else f"{r['sloLoss'] * 100:.2f}"
        rows.append([
            r["policy"], r["provisioning"], str(r["servers"]), f"{r['extraServers'] * 100:+.0f}%",
            _pct(r["sloAttainment"]), loss,
            _ms(r["criticalP99TtftMs"]), _ratio(r.get("criticalP99TtftVsUncapped")),
            _ratio(r.get("criticalP99E2eVsUncapped")), _ratio(r.get("normalP99TtftVsUncapped")),
            f"{r['secondsOverBudget']:g}", _pct(r["peakDrawShare"], 1),
            "/".join(f"{capped[c]:,.0f}" for c in ("batch", "normal", "critical")),
            _pct(r["trainingThroughput"], 1),
        ])  # fmt: skip
    headers = ["POLICY", "SERVERS FOR", "SERVING", "VS NAMEPLATE", "SLO ATTAIN", "LOSS PTS",
               "CRIT P99 TTFT MS", "X UNCAPPED", "CRIT P99 E2E X", "NORMAL P99 TTFT X",
               "S OVER BUDGET", "PEAK DRAW", "CAPPED GPU-S B/N/C", "TRAINING"]  # fmt: skip
    return table(rows, headers)


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def goal_lines(report: dict[str, Any]) -> list[str]:
    g, s = report["goals"], report["settings"]
    tolerance = s["p99_tolerance"] * 100
    extra, goal = g["extraServers"] * 100, s["goal_extra"] * 100
    ceiling = " (the search's ceiling: raise --max-servers to look further)" if g["ceilingReached"] else ""
    ttft, e2e = _ratio(g["criticalP99TtftVsUncapped"]), _ratio(g["criticalP99E2eVsUncapped"])
    met = _met(g["extraServersMet"])
    return [
        f"polca: {g['polcaServers']} serving servers{ceiling} under the budget that holds "
        f"{s['nameplateServers']} at nameplate ({extra:+.0f}%, goal {goal:+.0f}%): {met}",
        f"  SLO attainment lost vs the same servers uncapped: {g['sloLoss'] * 100:.2f} points "
        f"(goal <= {s['max_loss'] * 100:g}): {_met(g['sloLossMet'])}",
        f"  critical P99 TTFT {ttft}, E2E {e2e} of uncapped (goal within {tolerance:g}%): "
        f"{_met(g['criticalP99Met'])}",
        f"  seconds over budget: {g['secondsOverBudget']:g} (goal 0): {_met(g['violationsMet'])}",
    ]


def handle(args: argparse.Namespace) -> int:
    from cli.bench_stack import print_summary
    from plugins.sim import power_bench

    try:
        settings = settings_of(args)
        report = power_bench.run_bench(settings, lambda line: print(line, file=sys.stderr, flush=True))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    s, m = report["settings"], report["model"]
    cores, wall = report["machine"]["cpuCores"], report["wallSeconds"]
    print(
        f"powercap bench (simulation only, {cores} CPU cores, {wall} s): budget "
        f"{report['budgetWatts'] / 1e3:,.1f} kW = {s['budget_servers']} servers of {s['gpus_per_server']}x"
        f"{s['gpu_type']} at {m['tdpWatts']:g} W nameplate, {s['training_servers']} of them training; "
        f"{m['serving']}; {s['warmup_s']:g} s warm-up + {s['duration_s']:g} s measured, peak "
        f"{s['peak_rate']:g} req/s per serving server; decisions every {s['interval_s']:g} s, applied one "
        f"interval later; SLO TTFT <= {s['ttft_ms']:g} ms and TPOT <= {s['tpot_ms']:g} ms"
    )
    print(format_table(report))
    print(
        "LOSS PTS (SLO attainment points lost) and the X columns (P99 over uncapped): against the same "
        "servers with policy none; CAPPED GPU-S: GPU-seconds under a cap, batch/normal/critical; "
        "TRAINING: the training job's throughput vs uncapped"
    )
    for line in goal_lines(report):
        print(line)
    tried = ", ".join(f"{e['servers']} {'fits' if e['fits'] else 'no'}" for e in report["search"])
    print(f"search (polca vs uncapped at each count): {tried or 'nothing above nameplate tried'}")
    print("limits: " + "; ".join(report["limits"]))
    args.json_path = args.json
    print_summary(args, report)
    return 0


def add_parser(benches: Any) -> argparse.ArgumentParser:
    """Add ``powercap`` to the ``flotilla bench`` sub-commands."""
    from plugins.sim.power_loop import Settings

    d = Settings()
    parser = benches.add_parser(
        "powercap",
        help="serving servers under one power budget: nameplate vs polca oversubscription (simulated)",
        description="Simulate a Cluster under a power budget with the real powercap plugins in a closed "
        "loop (serving replicas replaying BurstGPT-like traffic, a training job, telemetry every interval) "
        "and find how many serving servers polca holds at <= 1 point of SLO-attainment loss, beside "
        "nameplate provisioning, the same servers uncapped, and static caps.",
    )
    add = parser.add_argument
    add("--budget-servers", type=int, default=d.budget_servers,
        help="the budget: this many servers at nameplate GPU power (default %(default)s)")  # fmt: skip
    add(
        "--training-servers",
        type=int,
        default=d.training_servers,
        help="servers running the batch training job",
    )
    add("--gpu-type", default=d.gpu_type, help="GPU type of every server (default %(default)s)")
    add("--gpus-per-server", type=int, default=d.gpus_per_server, help="GPUs per server = tensor parallelism")
    add("--model", default=d.model, help="model shape served (default %(default)s)")
    add("--duration", type=float, default=d.duration_s, help="measured seconds of simulated time")
    add("--warmup", type=float, default=d.warmup_s, help="seconds at trough load before measuring")
    add("--interval", type=float, default=d.interval_s, help="seconds between telemetry and decisions")
    add("--peak-rate", type=float, default=d.peak_rate, help="requests/s per serving server at the peak")
    add("--trough-share", type=float, default=d.trough_share, help="the quiet rate as a share of the peak")
    add(
        "--cv", type=float, default=None, help="inter-arrival coefficient of variation (default: the trace's)"
    )
    add(
        "--critical-share",
        type=float,
        default=d.critical_share,
        help="share of serving servers that are critical",
    )
    add("--slo-ttft-ms", type=float, default=d.ttft_ms)
    add("--slo-tpot-ms", type=float, default=d.tpot_ms)
    add("--max-loss", type=float, default=d.max_loss,
        help="SLO attainment a fitting count may lose (default %(default)s: one point)")  # fmt: skip
    add("--max-servers", type=int, default=None, help="the search's ceiling (default: 3x nameplate)")
    add("--trace", default=DEFAULT_TRACE, help="BurstGPT CSV for request lengths and burstiness")
    add("--seed", type=int, default=d.seed)
    add("--polca-params", type=_params("--polca-params"), default=None,
        help="polca's parameters as JSON (default: the plugin's defaults)")  # fmt: skip
    add("--static-params", type=_params("--static-params"), default=None, help="static's parameters as JSON")
    add("--quick", action="store_true", help="a small smoke run of fixed small settings (the tests use it)")
    add("--json", default=None, metavar="PATH", help="also write the JSON report here")
    parser.set_defaults(handler=handle)
    return parser
