"""The ``flotilla bench checkpoint`` command line: flags, the table and the JSON. torch loads
only in the training processes the bench starts (and to name the device)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from agents.runtimes.bench_args import positive_counts


def _plugins(text: str) -> tuple[str, ...]:
    from agents.runtimes.train.bench_checkpoint import PLUGINS

    chosen = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(PLUGINS))
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"--plugins takes names from {', '.join(PLUGINS)}; got {text!r}")
    return ("none", *(name for name in PLUGINS[1:] if name in chosen))


def settings_of(args: argparse.Namespace) -> Any:
    from agents.runtimes.train.bench_checkpoint import BenchSettings, quick_settings

    settings = BenchSettings(
        device=args.device,
        every=args.every,
        steps=args.steps,
        layers=args.layers,
        hidden=args.hidden,
        intermediate=args.intermediate,
        repeats=args.repeats,
        plugins=args.plugins,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        threads=args.threads,
    )
    if settings.repeats < 1:
        raise ValueError("--repeats must be >= 1")
    if settings.steps <= settings.warmup + 2:
        raise ValueError(f"--steps must be more than {settings.warmup + 2} (warm-up steps are not counted)")
    return quick_settings(settings) if args.quick else settings


def _cell(value: Any, suffix: str = "") -> str:
    if value is None:
        return "-"
    if suffix == "%":
        return f"{value * 100:+.1f}%"
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # a count averaged over runs that agree
    return f"{value:g}{suffix}" if isinstance(value, float) else f"{value}{suffix}"


def format_tables(report: dict[str, Any]) -> str:
    from cli.output import table

    rows = [
        [
            r["plugin"],
            str(r["everySteps"]),
            f"{_cell(r['stepMsMean'])} ({', '.join(_cell(v) for v in r['stepMsRuns'])})",
            _cell(r["stepOverhead"], "%"),
            _cell(r["stallMsMean"]),
            "/".join(_cell(r[key]) for key in ("checkpoints", "skipped", "failed")),
            _cell(r["durableLatencySMean"]),
            _cell(r["checkpointBytes"] and round(r["checkpointBytes"] / 2**20, 1)),
            _cell(r["hostMemoryMB"]),
        ]
        for r in report["results"]
    ]
    headers = [
        "CHECKPOINTER",
        "EVERY",
        "STEP MS (EACH RUN)",
        "OVERHEAD",
        "STALL MS",
        "DONE/SKIP/FAIL",
        "DURABLE AFTER S",
        "CKPT MB",
        "HOST MB",
    ]
    recovery_rows = []
    for plugin, figures in report["recovery"].items():
        for state in ("memory", "cold", "warm"):
            if state in figures:
                f = figures[state]
                recovery_rows.append(
                    [
                        plugin,
                        state,
                        _cell(f["restoredStep"]),
                        _cell(f["restoredLevel"]),
                        _cell(f["restoreSeconds"]),
                        _cell(f["restartToFirstStepSeconds"]),
                    ]
                )
    recovery_headers = [
        "CHECKPOINTER",
        "PAGE CACHE",
        "RESTORED STEP",
        "LEVEL",
        "RESTORE S",
        "RESTART TO STEP S",
    ]
    return table(rows, headers) + "\n\n" + table(recovery_rows, recovery_headers)


def handle(args: argparse.Namespace) -> int:
    from agents.runtimes.train import bench_checkpoint
    from cli.bench_stack import print_summary

    try:
        settings = settings_of(args)
        report = bench_checkpoint.run_bench(settings, lambda line: print(line, file=sys.stderr, flush=True))
    except (ValueError, RuntimeError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    s, machine = report["settings"], report["machine"]
    print(
        f"checkpoint bench on {machine['device']} ({machine['cpuCores']} CPU cores, torch threads "
        f"{s['threads']}), {s['steps']} steps per run ({s['warmup']} warm-up not counted), model "
        f"{s['model']['config']}, batch {s['batchSize']} x {s['seqLen']}; {report['wallSeconds']} s"
    )
    print(format_tables(report))
    print(
        "OVERHEAD: mean step time over the run without a checkpointer's, minus 1; DONE/SKIP/FAIL: "
        "checkpoints that reached the last level / skipped / failed; DURABLE AFTER: seconds from the "
        "save call to the last level (memory-snapshot: its durable copy, every M-th); "
        "RESTORE S: find, verify and load"
    )
    goals = report["goals"]
    lazy, blocking = (
        _cell(goals.get("lazyAsyncOverheadEvery1"), "%"),
        _cell(goals.get("blockingOverheadEvery1"), "%"),
    )
    ratios = ", ".join(f"{k} {v}x" for k, v in goals.items() if k.startswith("memoryVs"))
    print(
        f"goals: lazy-async overhead every step {lazy} (goal <= +5%), blocking {blocking} (>= +50%); "
        f"memory-snapshot restore against disk: {ratios or '-'} (goal >= 5x against cold disk)"
    )
    args.json_path = args.json
    print_summary(args, report)
    return 0


def add_parser(benches: Any) -> argparse.ArgumentParser:
    """Add ``checkpoint`` to the ``flotilla bench`` sub-commands."""
    from agents.runtimes.train.bench_checkpoint import BenchSettings

    d = BenchSettings()
    parser = benches.add_parser(
        "checkpoint",
        help="step-time overhead, latency until durable and kill -9 recovery of each checkpointer",
        description="Train the same model with no checkpointer, blocking, lazy-async and memory-snapshot, "
        "checkpointing every N steps, and kill -9 and restart each; prints a table and JSON.",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--every", type=positive_counts("--every"), default=d.every, help="checkpoint intervals, e.g. 1,10"
    )
    parser.add_argument("--steps", type=int, default=d.steps, help="training steps per run")
    parser.add_argument("--layers", type=int, default=d.layers)
    parser.add_argument("--hidden", type=int, default=d.hidden)
    parser.add_argument("--intermediate", type=int, default=d.intermediate)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--seq-len", type=int, default=d.seq_len)
    parser.add_argument(
        "--threads",
        type=int,
        help="training process's torch threads (default: on a CPU its cores minus one, on CUDA torch's)",
    )
    parser.add_argument(
        "--repeats", type=int, default=d.repeats, help="runs of each configuration, interleaved"
    )
    parser.add_argument(
        "--plugins",
        type=_plugins,
        default=d.plugins,
        help="checkpointers to measure, comma-separated (default: all; none always runs first)",
    )
    parser.add_argument("--quick", action="store_true", help="a small smoke run (the tests use it)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the JSON report here")
    parser.set_defaults(handler=handle)
    return parser
