"""Start and stop the control plane's processes: web server, Celery worker and beat.

Used by ``flotilla up``, by the benchmarks and by the end-to-end tests, so all
three run the system the same way.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import httpx

PYTHON = sys.executable


@dataclass
class Stack:
    home: Path
    port: int = 8000
    host: str = "127.0.0.1"
    env: dict[str, str] = field(default_factory=dict)
    web_threads: int = 16
    web_workers: int = 1
    worker_concurrency: int = 2
    quiet: bool = True
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def environ(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "FLOTILLA_HOME": str(self.home),
                "DJANGO_SETTINGS_MODULE": "controlplane.settings",
                "SECURE_COOKIES": env.get("SECURE_COOKIES", "false"),
                "SECURE_HSTS_SECONDS": env.get("SECURE_HSTS_SECONDS", "0"),
                "SECURE_SSL_REDIRECT": env.get("SECURE_SSL_REDIRECT", "false"),
                "SECURE_HSTS_PRELOAD": env.get("SECURE_HSTS_PRELOAD", "false"),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.env)
        return env

    def manage(self, *args: str) -> str:
        result = subprocess.run(
            [PYTHON, "-m", "django", *args],
            env=self.environ(),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"django {' '.join(args)} failed:\n{result.stderr[-3000:]}")
        return result.stdout

    def migrate(self) -> None:
        self.manage("migrate", "--noinput")

    def bootstrap(self) -> dict[str, str | None]:
        """The first admin token and dashboard admin password (each None if made before)."""
        return json.loads(self.manage("flotilla_bootstrap").strip().splitlines()[-1])

    def bootstrap_token(self) -> str | None:
        return self.bootstrap()["token"]

    def log(self, name: str) -> Path:
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        return self.home / "logs" / f"{name}.log"

    def spawn(self, name: str, argv: list[str], extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        env = self.environ()
        env.update(extra_env or {})
        out = open(self.log(name), "ab")  # noqa: SIM115 - handed to the child
        process = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.processes[name] = process
        return process

    def start_web(self) -> None:
        self.spawn(
            "web",
            [
                PYTHON,
                "-m",
                "gunicorn",
                "controlplane.wsgi:application",
                "--bind",
                f"{self.host}:{self.port}",
                "--worker-class",
                "gthread",
                # Each agent keeps a long-poll open plus a connection for its other calls;
                # gunicorn stops accepting past worker_connections (default 1000).
                "--worker-connections",
                str(max(1000, self.web_threads * 2 + 100)),
                "--workers",
                str(self.web_workers),
                "--threads",
                str(self.web_threads),
                "--timeout",
                "120",
                "--graceful-timeout",
                "5",
                "--no-control-socket",
            ],
        )

    def start_worker(self, name: str = "worker") -> None:
        self.spawn(
            name,
            [
                PYTHON,
                "-m",
                "celery",
                "-A",
                "controlplane.celeryapp",
                "worker",
                "--loglevel",
                "INFO",
                "--concurrency",
                str(self.worker_concurrency),
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-n",
                f"{name}-{os.getpid()}@%h",
            ],
        )

    def start_beat(self) -> None:
        self.spawn(
            "beat",
            [
                PYTHON,
                "-m",
                "celery",
                "-A",
                "controlplane.celeryapp",
                "beat",
                "--loglevel",
                "INFO",
                "--schedule",
                str(self.home / "celerybeat-schedule"),
            ],
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            web = self.processes.get("web")
            if web is not None and web.poll() is not None:
                raise RuntimeError(f"web server exited; see {self.log('web')}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"web server not ready after {timeout}s; see {self.log('web')}")

    def start(self) -> None:
        self.migrate()
        self.start_web()
        self.start_worker()
        self.start_beat()
        self.wait_ready()

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes.pop(name, None)
        if process is not None and process.poll() is None:
            os.killpg(process.pid, sig)
            process.wait(timeout=30)

    def stop(self, grace: float = 10.0) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                try:
                    # The leader only: Celery and gunicorn stop their own children gracefully.
                    os.kill(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for process in self.processes.values():
            try:  # whatever a leader left behind
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.processes.clear()


@contextmanager
def backend_env(
    database_url: str | None, broker_url: str | None, label: str = "flotilla"
) -> Iterator[dict[str, str]]:
    """Environment for a stack on the given back ends.

    A PostgreSQL URL gets a fresh database of its own (dropped afterwards), and a
    Redis broker a queue of its own, so runs never see each other's data. No URLs
    means the embedded defaults (SQLite + the filesystem broker) in the stack's home.
    """
    env: dict[str, str] = {"DATABASE_URL": "", "CELERY_BROKER_URL": ""}
    suffix = uuid.uuid4().hex[:10]
    if broker_url:
        env["CELERY_BROKER_URL"] = broker_url
        env["FLOTILLA_CELERY_QUEUE"] = f"{label}-{suffix}"
    if not (database_url or "").startswith("postgres"):
        yield env
        return
    import psycopg
    from psycopg import sql

    name = f"{label}_{suffix}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    env["DATABASE_URL"] = urlunparse(urlparse(database_url)._replace(path=f"/{name}"))
    try:
        yield env
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
