"""``flotilla up``: the whole system on one machine with embedded defaults."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Any

from cli.documents import read_files
from cli.stack import PYTHON, Stack
from common.client import Client, ClientError, load_config, write_config
from common.envhelpers import envint, flotilla_home

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def add_up_parser(sub: Any) -> None:
    """Add ``up`` to the ``flotilla`` sub-commands."""
    up = sub.add_parser("up", help="run everything on this machine with embedded defaults")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--no-agent", action="store_true", help="do not register this machine as a node")
    up.set_defaults(handler=run_up)


def run_up(args: argparse.Namespace) -> int:
    home = flotilla_home()
    home.mkdir(parents=True, exist_ok=True)
    # Each agent holds a long-poll watch on one thread; FLOTILLA_WEB_THREADS sizes the pool.
    threads = envint("FLOTILLA_WEB_THREADS", 64, minimum=4)
    stack = Stack(home=home, port=args.port, host=args.host, quiet=False, web_threads=threads)
    print(f"flotilla: home {home}; logs in {home / 'logs'}")
    print("flotilla: migrating the database ...")
    stack.migrate()
    first = stack.bootstrap()
    token, password = first["token"], first.get("password")
    if token:
        write_config(stack.url, token)
    else:
        token = load_config().get("token")
        if token:
            write_config(stack.url, token)

    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        stack.start_web()
        stack.start_worker()
        stack.start_beat()
        stack.wait_ready()
        if not args.no_agent and token:
            # The local agent joins the example Cluster "local" (examples/cluster.yaml).
            agent = [
                PYTHON,
                "-m",
                "agents",
                "--server",
                stack.url,
                "--token",
                token,
                "--cluster",
                "local",
                "--grace-period",
                "8",  # drains before the stack's 10 s stop deadline
            ]
            stack.spawn("agent", agent)
        _apply_examples_once(stack, token, home)
        _banner(stack, token, home, password)
        while not stopping:
            for name, process in list(stack.processes.items()):
                if process.poll() is not None:
                    print(
                        f"flotilla: {name} exited with {process.returncode}; see {stack.log(name)}",
                        file=sys.stderr,
                    )
                    stopping = True
            time.sleep(0.5)
    finally:
        print("\nflotilla: stopping ...")
        stack.stop()
        print("flotilla: stopped")
    return 0


def _apply_examples_once(stack: Stack, token: str | None, home: Path) -> None:
    marker = home / "examples-applied"
    if marker.exists() or not EXAMPLES.is_dir() or not token:
        return
    client = Client(stack.url, token)
    try:
        result = client.apply(read_files([str(EXAMPLES)]))
        for item in result["results"]:
            print(f"{item['kind'].lower()}/{item['name']} {item['action']}")
        marker.write_text("applied\n")
    except ClientError as exc:
        print(f"flotilla: could not apply examples/: {exc}", file=sys.stderr)
    finally:
        client.close()


def _banner(stack: Stack, token: str | None, home: Path, password: str | None) -> None:
    print()
    print(f"  Flotilla is running:  {stack.url}/")
    if password:
        print(f"  Dashboard log-in:     admin / {password}")
        print("                        (shown once; flotilla user create admin --role admin --reset)")
    print(f"  API:                  {stack.url}/api/v1/  (schema at /api/v1/openapi.json)")
    if token and not (home / "token-shown").exists():
        print(f"  Admin token:          {token}")
        print(f"                        (shown once; kept for the CLI in {home / 'config.yml'})")
        (home / "token-shown").write_text("yes\n")
    else:
        print(f"  Admin token:          in {home / 'config.yml'} (used by the CLI)")
    print("  Try:                  flotilla get deployments   |   flotilla events")
    print("  Stop with Ctrl+C.")
    print()
