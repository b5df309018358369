"""How the training runtime talks to its parent, the node agent.

Stdout carries one JSON object per line and nothing else, flushed as it is written, so the
agent can parse events as they come without buffering surprises; human-readable logs go to
stderr. The events, in order:

- ``{"event": "warning", "message": ...}`` -- zero or more, before training starts;
- ``{"event": "started", "steps": N, "params": P, ...}``;
- ``{"event": "progress", "step": s, "steps": N, "loss": ..., "tokensPerSecond": ..., "etaSeconds": ...}``
  -- every ``k`` steps (at most about :data:`MAX_PROGRESS_LINES` lines), always the first and last;
- then exactly one of ``succeeded`` (exit 0), ``stopped`` (a signal; exit 128 + signal number,
  so 143 for SIGTERM) or ``failed`` (exit :data:`EXIT_BAD_CONFIG` for a bad config,
  :data:`EXIT_ERROR` for anything else).
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import IO, Any

MAX_PROGRESS_LINES = 200
EXIT_ERROR = 1
EXIT_BAD_CONFIG = 2


def progress_every(steps: int, max_lines: int = MAX_PROGRESS_LINES) -> int:
    """The reporting stride ``k``: every step for short runs, sparse enough for long ones."""
    return max(1, math.ceil(steps / max_lines))


def should_report(step: int, steps: int, every: int) -> bool:
    """Whether ``step`` (1-based) gets a progress line: the first, the last, and every ``every``-th."""
    return step == 1 or step == steps or step % every == 0


class Reporter:
    """Writes events to ``out`` (stdout) and logs to ``err`` (stderr); keeps the throughput clock."""

    def __init__(
        self, steps: int, tokens_per_step: int, out: IO[str] | None = None, err: IO[str] | None = None
    ):
        self.steps = steps
        self.tokens_per_step = tokens_per_step
        self.every = progress_every(steps)
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.started_at = time.monotonic()
        self._last_step = 0
        self._last_time = self.started_at

    def emit(self, event: str, **fields: Any) -> None:
        """One JSON line on stdout, flushed at once so the parent sees it now, not at exit."""
        self.out.write(json.dumps({"event": event, **fields}, allow_nan=False) + "\n")
        self.out.flush()

    def log(self, message: str) -> None:
        """A human-readable line on stderr (which the agent keeps as the Workload's log)."""
        self.err.write(f"[train] {message}\n")
        self.err.flush()

    def start(self, params: int, **fields: Any) -> None:
        """Emit ``started`` and reset the clock, so model building does not count as training time."""
        self.started_at = self._last_time = time.monotonic()
        self.emit("started", steps=self.steps, params=params, **fields)

    def wants(self, step: int) -> bool:
        """Whether ``step`` needs its loss reported (the loop only syncs the device for those)."""
        return should_report(step, self.steps, self.every)

    def progress(self, step: int, loss: float) -> None:
        """Emit ``progress`` with throughput since the last line and an ETA from the average so far."""
        now = time.monotonic()
        window = max(now - self._last_time, 1e-9)
        tokens_per_second = (step - self._last_step) * self.tokens_per_step / window
        eta = (now - self.started_at) / step * (self.steps - step)
        self._last_step, self._last_time = step, now
        self.emit(
            "progress",
            step=step,
            steps=self.steps,
            loss=loss,
            tokensPerSecond=round(tokens_per_second, 1),
            etaSeconds=round(eta, 3),
        )
        self.log(f"step {step}/{self.steps} loss {loss:.4f} {tokens_per_second:,.0f} tok/s eta {eta:.1f}s")

    def elapsed(self) -> float:
        """Seconds since :meth:`start`."""
        return time.monotonic() - self.started_at
