"""Benchmarks (``flotilla bench …``); filled in below."""

from __future__ import annotations

from typing import Any


def add_bench_parser(sub: Any) -> None:
    parser = sub.add_parser("bench", help="run a benchmark and print a table and JSON")
    parser.set_defaults(handler=lambda args: 0)
