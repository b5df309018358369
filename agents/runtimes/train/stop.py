"""Turning SIGTERM/SIGINT into a flag the training loop checks between steps.

Why not die at once: the agent wants a final ``stopped`` line with the step reached, and the
checkpointer (a later issue) will need a clean step boundary to save at. This module imports
no torch so it can be installed before the slow imports start.
"""

from __future__ import annotations

import signal
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopFlag:
    """Remembers the last stop signal received; ``signal`` is None until one arrives."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def install(self) -> StopFlag:
        """Route the stop signals here instead of the default kill; returns self for chaining."""
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signal = signum
