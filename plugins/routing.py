"""Routing rules for the cache plugins: which ready replica serves a request.

- ``round-robin``: each replica in turn; what a plain load balancer does (the baseline).
- ``least-loaded``: the replica with the fewest requests queued and running.
- ``prefix-aware``: the replica holding the longest run of the request's leading KV
  blocks, traded against load (``loadWeight``), and never one with more than
  ``maxImbalance`` requests beyond the least loaded, so one hot prefix cannot pile
  every request on one replica (llm-d's precise prefix scorer, AIBrix's router).

Each router process holds one plugin object, so the round-robin position lives on
it (``Rotation``), guarded by a lock because the router serves on many threads.
"""

from __future__ import annotations

import threading
from typing import Literal

from plugins.types import ReplicaLoad, RouteRequest

Routing = Literal["round-robin", "least-loaded", "prefix-aware"]
ROUTINGS: tuple[Routing, ...] = ("round-robin", "least-loaded", "prefix-aware")


class Rotation:
    """A thread-safe counter that takes turns among ties."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = 0

    def pick(self, replicas: list[ReplicaLoad]) -> ReplicaLoad:
        with self._lock:
            chosen = replicas[self._next % len(replicas)]
            self._next += 1
        return chosen


def matched_blocks(request: RouteRequest, replica: ReplicaLoad) -> int:
    """How many of the request's leading blocks the replica holds, up to the first miss."""
    count = 0
    for name in request.block_hashes:
        if name not in replica.cached_hashes:
            break
        count += 1
    return count


def least_loaded(replicas: list[ReplicaLoad], rotation: Rotation) -> ReplicaLoad:
    lowest = min(r.load for r in replicas)
    return rotation.pick([r for r in replicas if r.load == lowest])


def prefix_aware(
    request: RouteRequest,
    replicas: list[ReplicaLoad],
    rotation: Rotation,
    load_weight: float,
    max_imbalance: int,
) -> ReplicaLoad:
    """The best of prefix share minus weighted relative load, among replicas within
    ``max_imbalance`` of the least loaded; least loaded when no replica holds any of it."""
    lowest = min(r.load for r in replicas)
    eligible = [r for r in replicas if r.load - lowest <= max_imbalance]
    total = len(request.block_hashes)
    matches = {r.name: matched_blocks(request, r) for r in eligible}
    if not total or not any(matches.values()):
        return least_loaded(eligible, rotation)
    busiest = max(r.load for r in eligible) or 1

    def score(r: ReplicaLoad) -> float:
        return matches[r.name] / total - load_weight * r.load / busiest

    best = max(score(r) for r in eligible)
    return rotation.pick([r for r in eligible if score(r) == best])


def choose_replica(
    routing: Routing,
    request: RouteRequest,
    replicas: list[ReplicaLoad],
    rotation: Rotation,
    load_weight: float = 0.5,
    max_imbalance: int = 4,
) -> ReplicaLoad:
    if not replicas:
        raise ValueError("no replica to route to")
    ordered = sorted(replicas, key=lambda r: r.name)
    if routing == "round-robin":
        return rotation.pick(ordered)
    if routing == "least-loaded":
        return least_loaded(ordered, rotation)
    return prefix_aware(request, ordered, rotation, load_weight, max_imbalance)
