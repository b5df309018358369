"""``flotilla bench dashboard``: server-side render time of every dashboard page at fleet scale.

For each back end it makes a fresh database, fills it (``manage.py
flotilla_bench_dashboard``: 1,000 simulated nodes with 8 GPUs each, Deployments
and TrainingJobs placed by the real scheduler, an hour of raw telemetry for every
node, a week of minute roll-ups for some, thousands of events) and renders each
page repeatedly through Django's full request handler. Target: p99 under 300 ms.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cli.bench_stack import add_backend_args, on_each_backend, print_summary
from cli.output import table
from cli.stack import PYTHON, Stack

TARGET_MS = 300.0


def add_parser(benches: Any) -> None:
    parser = benches.add_parser("dashboard", help="fill a fleet of 1,000 nodes; time each dashboard page")
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--deployments", type=int, default=250)
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument(
        "--week-nodes", type=int, default=10, help="nodes given a full week of minute roll-ups (8 GPUs each)"
    )
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--renders", type=int, default=20, help="timed renders per page")
    add_backend_args(parser)
    parser.set_defaults(handler=run)


def bench_backend(label: str, env: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"flotilla-bench-dashboard-{label}-") as home:
        stack = Stack(home=Path(home), port=0, env={**env, "FLOTILLA_LOAD_ENTRYPOINTS": "false"})
        print(f"[{label}] migrating a fresh database ...", file=sys.stderr)
        stack.migrate()
        print(f"[{label}] filling and measuring (this takes a few minutes) ...", file=sys.stderr)
        started = time.monotonic()
        # stderr passes through: the fill reports its progress there.
        done = subprocess.run(
            [
                PYTHON, "-m", "django", "flotilla_bench_dashboard",
                *("--nodes", str(args.nodes), "--gpus-per-node", str(args.gpus_per_node)),
                *("--deployments", str(args.deployments), "--replicas", str(args.replicas)),
                *("--jobs", str(args.jobs), "--week-nodes", str(args.week_nodes)),
                *("--events", str(args.events), "--renders", str(args.renders)),
            ],
            env=stack.environ(),
            stdout=subprocess.PIPE,
            text=True,
            check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"[{label}] the fill or the measurement failed (exit {done.returncode})")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"[{label}] done in {time.monotonic() - started:.0f}s", file=sys.stderr)
        return {"backend": label, **result}


def run(args: argparse.Namespace) -> int:
    results = on_each_backend(args, bench_backend)
    if results is None:
        return 2
    rows = []
    for r in results:
        for page in r["pages"]:
            verdict = "ok" if page["p99Ms"] < TARGET_MS and page["status"] == 200 else "SLOW"
            if page["status"] != 200:
                verdict = f"HTTP {page['status']}"
            rows.append(
                [r["backend"], page["page"], f"{page['p50Ms']:.0f}", f"{page['p99Ms']:.0f}",
                 f"{page['bytes'] / 1024:.0f}", verdict]
            )  # fmt: skip
    print(table(rows, ["BACKEND", "PAGE", "P50 MS", "P99 MS", "KIB", f"P99 < {TARGET_MS:.0f} MS"]))
    for r in results:
        print(
            f"{r['backend']}: {r['nodes']} nodes, {r['gpus']} GPUs, {r['workloads']} Workloads, "
            f"{r['rawSamples']} raw + {r['minuteSamples']} minute telemetry rows, {r['events']} events "
            f"(filled in {sum(r['fill'].values()):.0f}s)"
        )
    summary: dict[str, Any] = {"bench": "dashboard", "targetMs": TARGET_MS, "results": results}
    if len(results) == 2:
        a, b = results
        pairs = zip(a["pages"], b["pages"], strict=True)
        summary["ratios"] = {
            f"p50 {b['backend']}/{a['backend']} {pa['page']}": round(pb["p50Ms"] / pa["p50Ms"], 3)
            for pa, pb in pairs
            if pa["p50Ms"]
        }
    print_summary(args, summary)
    slow = [p for r in results for p in r["pages"] if p["p99Ms"] >= TARGET_MS or p["status"] != 200]
    return 1 if slow else 0
