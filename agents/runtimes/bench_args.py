"""Argument types the ``flotilla bench`` sub-commands share (no torch, no Django)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def positive_counts(flag: str) -> Callable[[str], tuple[int, ...]]:
    """An argparse ``type`` for ``flag``: comma-separated integers, each at least 1."""

    def parse(text: str) -> tuple[int, ...]:
        try:
            counts = tuple(int(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag} must be integers separated by commas, got {text!r}"
            ) from None
        if not counts or min(counts) < 1:
            raise argparse.ArgumentTypeError(f"{flag} values must be >= 1")
        return counts

    return parse
