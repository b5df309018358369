"""What the benches that start a stack share: their back-end flags, one run per back end,
the percentile they report, and the memory of a simulated H100.

``flotilla bench apply``, ``agents`` and ``dashboard`` each measure one back end at a time
on this machine, so that their figures compare like with like.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agents.runtimes.serve.metrics import percentile as nearest_rank
from cli.stack import backend_env

GPU_MEMORY_MIB = 81559  # a simulated H100's, as the agent reports it


def add_backend_args(parser: argparse.ArgumentParser) -> None:
    """--backends, --database-url, --broker-url and --json: what every stack bench takes."""
    parser.add_argument(
        "--backends",
        default="sqlite,postgresql",
        help="comma-separated: sqlite (embedded defaults), postgresql (needs --database-url)",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        help="a PostgreSQL server; the bench creates and drops a database of its own there",
    )
    parser.add_argument(
        "--broker-url",
        default=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0"),
        help="the Redis broker used with postgresql",
    )
    parser.add_argument("--json", dest="json_path", help="also write the JSON result here")


def on_each_backend(
    args: argparse.Namespace, bench: Callable[[str, dict[str, str], argparse.Namespace], dict[str, Any]]
) -> list[dict[str, Any]] | None:
    """Run ``bench`` on each back end named in ``--backends``, one after the other on this
    machine, so their figures compare like with like; None for an unknown name."""
    results = []
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        if backend == "sqlite":
            with backend_env(None, None) as env:
                results.append(bench("sqlite+filesystem", env, args))
        elif backend == "postgresql":
            with backend_env(args.database_url, args.broker_url, "flotilla_bench") as env:
                results.append(bench("postgresql+redis", env, args))
        else:
            print(f"error: unknown backend {backend!r}; use sqlite or postgresql", file=sys.stderr)
            return None
    return results


def print_summary(args: argparse.Namespace, summary: dict[str, Any]) -> None:
    """Print the bench's JSON summary after its table, and write it to ``--json`` if given."""
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json_path:
        Path(args.json_path).write_text(text + "\n")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile, NaN (printed as such) when nothing was measured."""
    value = nearest_rank(values, q)
    return float("nan") if value is None else value
