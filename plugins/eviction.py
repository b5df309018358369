"""Eviction and session pinning for the cache plugins: which unreferenced KV blocks go
first, and how long a multi-turn session's blocks stay pinned after its turn.

Pure functions of plain data (``plugins.types.CachedBlock``, ``SessionTurn``), so
``plugins/caches.py`` composes them with a routing rule into each named plugin and
a test can check an eviction order without an engine.

- ``none``: no reuse at all; the no-cache baseline.
- ``prefix-lru``: least recently used first; among equally recent blocks the deepest
  (a prefix's tail) goes first, so a shared head outlives the tails hanging off it.
- ``session-ttl`` (Continuum): as ``prefix-lru``, but a session's blocks are pinned
  for a time-to-live after its turn, chosen from the gaps seen between its turns and
  capped by a share of the cache. Under memory pressure unpinned blocks go first,
  then pins are broken soonest-to-expire first, before the engine preempts anyone.
"""

from __future__ import annotations

from typing import Literal

from plugins.types import CachedBlock, SessionTurn

Eviction = Literal["none", "prefix-lru", "session-ttl"]
EVICTIONS: tuple[Eviction, ...] = ("none", "prefix-lru", "session-ttl")
# How many of a session's latest gaps decide its TTL: recent behaviour, not its whole past.
RECENT_GAPS = 3


def eviction_order(blocks: list[CachedBlock], now: float) -> list[CachedBlock]:
    """Unpinned blocks least recently used first (deepest first among equals), then pinned
    ones, the soonest to expire first."""
    return sorted(
        blocks,
        key=lambda b: (
            b.pinned_until > now,
            b.pinned_until if b.pinned_until > now else b.last_used,
            -b.depth,
        ),
    )


def choose_victims(
    eviction: Eviction, blocks: list[CachedBlock], needed: int, now: float, total_blocks: int, share: float
) -> list[int]:
    """The block ids to free: ``needed`` of them under pressure, or (``needed == 0``) the
    unpinned ones beyond ``share`` of ``total_blocks``."""
    free = [b for b in blocks if b.ref_count == 0]
    if eviction == "none":
        return [b.block_id for b in free[:needed]] if needed else [b.block_id for b in free]
    ordered = eviction_order(free, now)
    if needed > 0:
        return [b.block_id for b in ordered[:needed]]
    unpinned = [b for b in ordered if b.pinned_until <= now]
    keep = int(share * total_blocks)
    return [b.block_id for b in unpinned[: max(0, len(unpinned) - keep)]]


def session_ttl(
    turn: SessionTurn,
    *,
    min_seconds: float,
    max_seconds: float,
    first_turn_seconds: float,
    gap_multiplier: float,
    pin_share: float,
) -> float:
    """Seconds to pin ``turn``'s blocks: ``gap_multiplier`` × the longest of the session's
    recent gaps (``first_turn_seconds`` before any gap is known), within the bounds; 0 when
    pinning them would take the cache's pinned share past ``pin_share``."""
    if not turn.blocks:
        return 0.0
    adding = len(turn.blocks) / turn.total_blocks if turn.total_blocks else 0.0
    if turn.pinned_share + adding > pin_share:
        return 0.0
    if turn.gaps:
        ttl = gap_multiplier * max(turn.gaps[-RECENT_GAPS:])
    else:
        ttl = first_turn_seconds
    return min(max_seconds, max(min_seconds, ttl))
