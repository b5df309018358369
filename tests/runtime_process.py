"""A runtime as the agent runs it: ``python -m agents.runtimes.<name>`` in a real subprocess,
waited on until it prints its one ready line, stopped with SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx

from common.ports import free_port

ROOT = Path(__file__).resolve().parents[1]


class RuntimeProcess:
    """One runtime subprocess on a free port; ``url`` and ``client`` once it is ready."""

    def __init__(
        self,
        runtime: str,
        tmp: Path,
        config: dict[str, Any],
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        ready_timeout: float = 60.0,
        client_timeout: float = 30.0,
    ):
        path = tmp / f"{runtime}.json"
        path.write_text(json.dumps(config))
        argv = [sys.executable, "-m", f"agents.runtimes.{runtime}", "--config", str(path)]
        argv += ["--port", str(free_port()), *(args or [])]
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**(env if env is not None else os.environ), "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        self.stderr: list[str] = []
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()
        timer = threading.Timer(ready_timeout, self.proc.kill)
        timer.start()
        line = self.proc.stdout.readline()
        timer.cancel()
        assert line, f"{runtime} exited before it was ready: {''.join(self.stderr)}"
        ready = json.loads(line)
        assert ready["event"] == "ready"
        self.url = ready["url"]
        self.client = httpx.Client(base_url=self.url, timeout=client_timeout)

    def stop(self) -> int:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
