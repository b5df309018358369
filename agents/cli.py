"""``flotilla agent`` (also ``python -m agents``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any


def parse_labels(text: str | None) -> dict[str, str]:
    labels = {}
    for part in (text or "").split(","):
        if part.strip():
            key, sep, value = part.partition("=")
            if not sep:
                raise SystemExit(f"error: --labels term {part!r} is not key=value")
            labels[key.strip()] = value.strip()
    return labels


def configure(parser: argparse.ArgumentParser, global_flags: bool = False) -> None:
    if global_flags:
        # Also accepted after the sub-command: `flotilla agent --server … --token …`.
        parser.add_argument("--server", default=argparse.SUPPRESS, help="control plane URL")
        parser.add_argument(
            "--token", default=argparse.SUPPRESS, help="bootstrap token (default: FLOTILLA_TOKEN)"
        )
    parser.add_argument("--name", help="node name (default: the host name)")
    parser.add_argument("--cluster", help="Cluster this node joins")
    parser.add_argument("--labels", help="node labels, k=v[,k=v]")
    parser.add_argument("--simulate", help="simulated devices, e.g. 8xH100 or 4xA100-80GB,4xL4")
    parser.add_argument("--interval", type=float, default=5.0, help="heartbeat seconds (default 5)")
    parser.add_argument(
        "--state-dir", help="where the node token and Workload logs live (default: $FLOTILLA_HOME/agent/NAME)"
    )
    parser.add_argument(
        "--grace-period",
        type=float,
        default=30.0,
        help="seconds Workloads get to stop on SIGTERM before they are killed",
    )
    parser.add_argument(
        "--power-backend",
        choices=["off", "simulate", "nvml"],
        default="off",
        help="off observes only (default); simulate keeps limits in memory; nvml sets real "
        "limits and needs root",
    )
    parser.add_argument(
        "--simulate-workloads",
        action="store_true",
        help="report Workloads as running without starting their runtimes (for scale tests)",
    )
    parser.add_argument(
        "--advertise-host",
        default="127.0.0.1",
        help="host name in the serving URLs this node reports (default 127.0.0.1)",
    )


def add_agent_parser(sub: Any) -> None:
    parser = sub.add_parser("agent", help="run the node agent on this machine")
    configure(parser, global_flags=True)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from agents.agent import build

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per heartbeat is noise
    try:
        agent = build(
            args.server or os.environ.get("FLOTILLA_SERVER"),
            args.token or os.environ.get("FLOTILLA_TOKEN"),
            args.name,
            args.cluster,
            parse_labels(args.labels),
            args.simulate,
            args.interval,
            state_dir=args.state_dir,
            grace=args.grace_period,
            advertise_host=args.advertise_host,
            simulate_workloads=args.simulate_workloads,
            power_backend=args.power_backend,
        )
    except (ValueError, PermissionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    agent.install_signal_handlers()
    agent.run()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flotilla agent")
    parser.add_argument("--server")
    parser.add_argument("--token")
    configure(parser)
    return run(parser.parse_args(argv))
