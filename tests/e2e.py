"""Helpers for the end-to-end suites: a real stack on the back ends CI provides.

With DATABASE_URL and CELERY_BROKER_URL set (CI's PostgreSQL + Redis run), the
stack gets its own fresh PostgreSQL database and its own Celery queue on that
Redis; without them it runs on the embedded defaults (SQLite + filesystem
broker) in a temporary FLOTILLA_HOME.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cli.stack import Stack, backend_env
from common.client import Client, ClientError
from common.ports import free_port

ROOT = Path(__file__).resolve().parent.parent


def backend_label() -> str:
    url = os.environ.get("DATABASE_URL", "")
    return "postgresql+redis" if url.startswith("postgres") else "sqlite+filesystem"


def wait_for(
    predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.2, what: str = ""
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except ClientError as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}; last: {last!r}")


def condition(document: dict[str, Any], type_: str) -> str | None:
    for item in document.get("status", {}).get("conditions", []):
        if item["type"] == type_:
            return item["status"]
    return None


class RunningStack:
    """A started Stack with an admin client and simulated agents."""

    def __init__(self, stack: Stack, token: str):
        self.stack = stack
        self.token = token
        self.client = Client(stack.url, token)
        self.agents: dict[str, subprocess.Popen] = {}

    def start_agent(
        self,
        name: str,
        simulate: str = "4xH100",
        cluster: str | None = None,
        run_workloads: bool = False,
        labels: str | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        argv = [
            sys.executable,
            "-m",
            "agents",
            "--server",
            self.stack.url,
            "--token",
            self.token,
            "--name",
            name,
            "--simulate",
            simulate,
            "--interval",
            "1",
        ]
        if cluster:
            argv += ["--cluster", cluster]
        if not run_workloads:
            argv.append("--simulate-workloads")
        if labels:
            argv += ["--labels", labels]
        argv += list(extra_args)
        self.agents[name] = self.stack.spawn(f"agent-{name}", argv)

    def stop_agent(self, name: str) -> None:
        self.agents.pop(name)
        self.stack.kill(f"agent-{name}")

    def node_ready(self, name: str) -> bool:
        return condition(self.client.get("nodes", name), "Ready") == "True"

    def cli(self, *args: str, input_text: str | None = None) -> subprocess.CompletedProcess:
        env = dict(os.environ, FLOTILLA_SERVER=self.stack.url, FLOTILLA_TOKEN=self.token)
        return subprocess.run(
            [sys.executable, "-m", "cli.main", *args],
            env=env,
            capture_output=True,
            text=True,
            input=input_text,
            timeout=60,
            cwd=ROOT,
            check=False,
        )


@contextmanager
def running_stack(tmp: Path, extra_env: dict[str, str] | None = None) -> Iterator[RunningStack]:
    database_url = os.environ.get("DATABASE_URL")
    with backend_env(database_url, os.environ.get("CELERY_BROKER_URL"), "flotilla_e2e") as db_env:
        env = {
            **db_env,
            "SECRET_KEY": "e2e-" + uuid.uuid4().hex * 2,
            "FLOTILLA_RESYNC_SECONDS": "2",
            "FLOTILLA_NODE_TIMEOUT": "4",
            "FLOTILLA_RECONCILE_LOCK_SECONDS": "3",
            "FLOTILLA_LOAD_ENTRYPOINTS": "false",
            "FLOTILLA_PLUGIN_MODULES": "tests.slow_scheduler",
            **(extra_env or {}),
        }
        stack = Stack(home=tmp, port=free_port(), env=env, web_threads=8)
        try:
            stack.start()
            token = stack.bootstrap_token()
            assert token, "a fresh database must yield a first admin token"
            running = RunningStack(stack, token)
            yield running
        except Exception:
            for log in sorted((tmp / "logs").glob("*.log")):
                print(f"===== {log.name} (tail)\n" + log.read_text()[-4000:])
            raise
        finally:
            stack.stop()
