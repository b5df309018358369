"""The ``flotilla bench serve`` command line; torch loads only when the bench runs,
so every other ``flotilla`` command stays quick and quiet."""

from __future__ import annotations

import argparse
from typing import Any

from agents.runtimes.bench_args import positive_counts


def handle(args: argparse.Namespace) -> int:
    from agents.runtimes.serve import bench

    return bench.handle(args)


def add_parser(benches: Any) -> argparse.ArgumentParser:
    """Add ``serve`` to the ``flotilla bench`` sub-commands."""
    parser = benches.add_parser(
        "serve",
        help="continuous-batching engine vs one-at-a-time baseline",
        description="Continuous batching vs one request at a time, on the same model.",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--concurrency", type=positive_counts("--concurrency"), default=(1, 8, 32), help="levels, e.g. 1,8,32"
    )
    parser.add_argument("--requests", type=int, default=32, help="requests per level and server")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--model-source", default="builtin:tiny-llama")
    parser.add_argument("--model-config", default=None, help="JSON overrides, e.g. '{\"layers\": 2}'")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the JSON report here")
    parser.set_defaults(handler=handle)
    return parser
