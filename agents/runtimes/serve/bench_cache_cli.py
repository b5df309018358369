"""The ``flotilla bench cache`` command line: flags, the table and the JSON. torch loads only
when the bench runs, so every other ``flotilla`` command stays quick."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from agents.runtimes.bench_args import positive_counts
from agents.runtimes.serve.bench_cache_workload import WorkloadSettings


def settings_of(args: argparse.Namespace) -> Any:
    from agents.runtimes.serve.bench_cache import BenchSettings, quick_settings

    workload = WorkloadSettings(
        conversations=args.conversations, min_turns=args.min_turns, max_turns=args.max_turns,
        system_tokens=args.system_tokens, user_tokens=args.user_tokens, answer_tokens=args.answer_tokens,
        think_mean_s=args.think_mean, think_sigma=args.think_sigma, single_share=args.single_share,
        seed=args.seed,
    )  # fmt: skip
    settings = BenchSettings(
        replicas=args.replicas, device=args.device, workload=workload, load=args.load, rate=args.rate,
        kv_blocks=args.kv_blocks, max_batch=args.max_batch, model_source=args.model_source,
    )  # fmt: skip
    return quick_settings(settings) if args.quick else settings


def _cell(value: Any, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}{suffix}" if suffix == "x" else f"{value:g}{suffix}"
    return f"{value}{suffix}"


def format_table(report: dict[str, Any]) -> str:
    from cli.output import table

    rows = []
    for r in report["results"]:
        sim, ratio = r["simulated"], r["ratios"]
        figures = [r["ttftMsP50"], r["ttftMsP90"], sim["ttftMsP50"], sim["ttftMsP90"], r["throughputRps"],
                   r["tokensPerSecond"], r["hitRate"], sim["hitRate"]]  # fmt: skip
        rows.append(
            [str(r["replicas"]), r["configuration"], f"{r['completed']}/{r['requests']}"]
            + [_cell(value) for value in figures]
            + [_cell(ratio["ttftP90"], "x"), _cell(ratio["throughput"], "x")]
        )
    headers = ["REPLICAS", "CONFIGURATION", "DONE", "TTFT P50 MS", "TTFT P90 MS", "SIM P50", "SIM P90",
               "REQ/S", "TOK/S", "HIT RATE", "SIM HIT", "P90 VS RR", "REQ/S VS RR"]  # fmt: skip
    return table(rows, headers)


def handle(args: argparse.Namespace) -> int:
    from agents.runtimes.serve import bench_cache
    from cli.bench_stack import print_summary

    try:
        settings = settings_of(args)
        report = bench_cache.run_bench(settings, lambda line: print(line, file=sys.stderr, flush=True))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    s, machine = report["settings"], report["machine"]
    offered = ", ".join(f"{v['offeredRps']}/s on {k} replicas" for k, v in report["schedules"].items())
    print(
        f"cache bench on {machine['device']} ({machine['cpuCores']} CPU cores), "
        f"{s['workload']['requests']} requests per configuration, {s['kvBlocksPerReplica']} KV blocks "
        f"per replica, offered {offered}; {report['wallSeconds']} s"
    )
    print(format_table(report))
    print("P90 VS RR: the baseline's P90 TTFT over this one's (above 1: faster); REQ/S VS RR: "
          "completed requests per second over the baseline's")  # fmt: skip
    for replicas, goal in report["goals"].items():
        ttl = goal["sessionTtlAheadOfPrefixLru"]
        ahead = "ahead of" if ttl else "not ahead of" if ttl is not None else "not comparable with"
        best = _cell(goal["bestP90TtftRatio"], "x")
        print(
            f"{replicas} replicas: best P90 TTFT {best} better than round-robin without a cache "
            f"({goal['bestConfiguration']}; goal 3x); session-ttl {ahead} prefix-lru at P90; think time "
            f"{goal['thinkTimeMeanS']} s vs LRU retention {_cell(goal['lruRetentionSimulatedS'])} s "
            "(simulated)"
        )
    print("limits: " + "; ".join(report["limits"]))
    args.json_path = args.json
    print_summary(args, report)
    failed = any(r["errors"] for r in report["results"])
    return 1 if failed else 0


def add_parser(benches: Any) -> argparse.ArgumentParser:
    """Add ``cache`` to the ``flotilla bench`` sub-commands."""
    defaults = WorkloadSettings()
    parser = benches.add_parser(
        "cache",
        help="prefix caching, session pins and prefix-aware routing vs round-robin without a cache",
        description="Serve one multi-turn workload on real replicas behind the router with each cache "
        "configuration (same seed, same arrivals), and compare TTFT, throughput and hit rate with "
        "round-robin without a cache; the simulator predicts each from the same trace.",
    )
    parser.add_argument(
        "--replicas", type=positive_counts("--replicas"), default=(2, 4), help="replica counts, e.g. 2,4"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (passed to the replicas)")
    parser.add_argument(
        "--quick", action="store_true", help="a small smoke run of fixed small settings (the tests use it)"
    )
    parser.add_argument("--load", type=float, default=0.5,
                        help="offered load: this share of what the replicas serve one request at a time "
                        "without a cache (default 0.5)")  # fmt: skip
    parser.add_argument("--rate", type=float, help="offered requests/s instead of --load")
    parser.add_argument(
        "--kv-blocks", type=int, help="KV blocks per replica (default: 2 of the longest turn)"
    )
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--conversations", type=int, default=defaults.conversations)
    parser.add_argument("--min-turns", type=int, default=defaults.min_turns)
    parser.add_argument("--max-turns", type=int, default=defaults.max_turns)
    parser.add_argument("--system-tokens", type=int, default=defaults.system_tokens)
    parser.add_argument(
        "--user-tokens", type=int, default=defaults.user_tokens, help="mean user message length"
    )
    parser.add_argument(
        "--answer-tokens", type=int, default=defaults.answer_tokens, help="max_tokens per request"
    )
    parser.add_argument("--think-mean", type=float, default=defaults.think_mean_s, help="mean think time, s")
    parser.add_argument(
        "--think-sigma", type=float, default=defaults.think_sigma, help="its log-normal sigma"
    )
    parser.add_argument("--single-share", type=float, default=defaults.single_share,
                        help="share of single-shot requests")  # fmt: skip
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--model-source", default="builtin:tiny-llama")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the JSON report here")
    parser.set_defaults(handler=handle)
    return parser
