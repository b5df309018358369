"""How the training runtime talks to its parent, the node agent.

Stdout carries one JSON object per line and nothing else, flushed as it is written, so the
agent can parse events as they come without buffering surprises; human-readable logs go to
stderr. The events, in order:

- ``{"event": "warning", "message": ...}`` -- zero or more, before training starts;
- ``{"event": "restored", "step": S, "level": L, "path": P, "seconds": X, "plugin": NAME}``
  -- at most once, before ``started``, when training resumes from a checkpoint (the job's own,
  or ``resumeFrom``); X counts finding, verifying and loading the state;
- ``{"event": "checkpointRejected", "path": P, "reason": R}`` -- one per checkpoint passed over
  at restore because its manifest or a checksum did not verify (it is never loaded);
- ``{"event": "started", "steps": N, "params": P, "resumedFrom": S, "checkpointer": NAME,
  "everySteps": E, ...}`` -- ``resumedFrom`` is 0 for a fresh start, ``checkpointer`` and
  ``everySteps`` are null without a checkpointer;
- ``{"event": "progress", "step": s, "steps": N, "loss": ..., "tokensPerSecond": ...,
  "etaSeconds": ..., "stepMs": ..., "stallMs": ...}`` -- every ``k`` steps (at most about
  :data:`MAX_PROGRESS_LINES` lines), always the first (after a resume: the first one run) and
  last; ``stepMs`` is the mean wall time per step since the previous line and ``stallMs`` the
  part of that window the loop spent blocked in checkpoint ``save``/``before_update``;
- ``{"event": "checkpoint", "step": S, "level": L, "path": P, "bytes": B, "seconds": X,
  "completedAt": UNIX, "plugin": NAME}`` -- each time a checkpoint reaches a level (X counts
  from the save call), interleaved with progress as saves finish in the background; the last
  step's checkpoint is always written and reported before ``succeeded``;
- ``{"event": "checkpointFailed", "step": S, "level": L, "error": E, "skipped": BOOL,
  "plugin": NAME}`` -- a level failed, or the save was skipped (``whenBusy: skip``); training
  goes on;
- then exactly one of ``succeeded`` (exit 0), ``stopped`` (a signal; exit 128 + signal number,
  so 143 for SIGTERM; an in-flight save is waited for, up to a minute, first) or ``failed``
  (exit :data:`EXIT_BAD_CONFIG` for a bad config, :data:`EXIT_ERROR` for anything else).
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
        self.first_step = 1
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

    def start(self, params: int, resumed_from: int = 0, **fields: Any) -> None:
        """Emit ``started`` and reset the clock, so model building (and a restore) does not count
        as training time; after a resume, rates and the ETA count only the steps run here."""
        self.started_at = self._last_time = time.monotonic()
        self.first_step = resumed_from + 1
        self._last_step = resumed_from
        self.emit("started", steps=self.steps, params=params, resumedFrom=resumed_from, **fields)

    def wants(self, step: int) -> bool:
        """Whether ``step`` needs its loss reported (the loop only syncs the device for those)."""
        return step == self.first_step or should_report(step, self.steps, self.every)

    def progress(self, step: int, loss: float, stall_seconds: float = 0.0) -> None:
        """Emit ``progress`` with throughput since the last line and an ETA from the average so far.

        ``stall_seconds`` is the time of this window the loop spent blocked on checkpointing:
        next to ``stepMs`` it shows what a checkpointer costs each step.
        """
        now = time.monotonic()
        window = max(now - self._last_time, 1e-9)
        steps_run = max(step - self._last_step, 1)
        tokens_per_second = steps_run * self.tokens_per_step / window
        done_here = max(step - self.first_step + 1, 1)
        eta = (now - self.started_at) / done_here * (self.steps - step)
        self._last_step, self._last_time = step, now
        self.emit(
            "progress",
            step=step,
            steps=self.steps,
            loss=loss,
            tokensPerSecond=round(tokens_per_second, 1),
            etaSeconds=round(eta, 3),
            stepMs=round(window * 1000 / steps_run, 3),
            stallMs=round(stall_seconds * 1000, 3),
        )
        self.log(f"step {step}/{self.steps} loss {loss:.4f} {tokens_per_second:,.0f} tok/s eta {eta:.1f}s")

    def elapsed(self) -> float:
        """Seconds since :meth:`start`."""
        return time.monotonic() - self.started_at
