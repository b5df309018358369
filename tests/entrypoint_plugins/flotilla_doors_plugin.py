"""A third-party plugin as tests/test_plugin_doors.py installs it: one module, found
through its distribution's ``flotilla`` entry point, one implementation of each of the
three kinds the agents run. Trivial but real: each does what its Protocol says.

It imports what a package outside this repository would: pluggy, pydantic and
Flotilla's plugin types.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pluggy
from pydantic import BaseModel, ConfigDict, Field

from plugins.types import FinishedSave, PowerDecision

hookimpl = pluggy.HookimplMarker("flotilla")


class LruParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pinSeconds: float = Field(default=30.0, ge=0)
    keepFree: int = Field(default=0, ge=0)


class LruCache:
    """Evicts the least recently used free blocks; pins every session for a while; routes
    a request to the replica with the fewest queued requests."""

    name: ClassVar[str] = "doors-lru"
    kind: ClassVar[str] = "cache"
    description: ClassVar[str] = "Least recently used eviction, fixed session pins (a test plugin)."
    Params: ClassVar[type[BaseModel]] = LruParams

    def reuses_prefixes(self, *, params: LruParams) -> bool:
        return True

    def evict(
        self, *, blocks: list[Any], needed: int, now: float, total_blocks: int, params: LruParams
    ) -> list[int]:
        free = sorted((b for b in blocks if b.ref_count == 0), key=lambda b: b.last_used)
        return [b.block_id for b in free[: needed + params.keepFree]]

    def pin_seconds(self, *, turn: Any, params: LruParams) -> float:
        return params.pinSeconds

    def route(self, *, request: Any, replicas: list[Any], params: LruParams) -> str:
        return min(replicas, key=lambda r: (r.queued, r.name)).name


class KeepParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keep: int = Field(default=2, ge=1)


class MemoryCheckpointer:
    """Keeps the newest ``keep`` states in memory, by target owner."""

    name: ClassVar[str] = "doors-memory"
    kind: ClassVar[str] = "checkpointer"
    description: ClassVar[str] = "Blocking saves into memory (a test plugin)."
    Params: ClassVar[type[BaseModel]] = KeepParams

    def __init__(self) -> None:
        self.saved: dict[str, list[Any]] = {}

    def save(self, *, state: Any, target: Any, params: KeepParams) -> FinishedSave:
        kept = self.saved.setdefault(target.owner, [])
        kept.append(state)
        del kept[: -params.keep]
        return FinishedSave(step=state.step)

    def restore(self, *, target: Any, params: KeepParams) -> Any:
        kept = self.saved.get(target.owner)
        return kept[-1] if kept else None


class ShareParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    headroom: float = Field(default=0.0, ge=0, lt=1)


class EvenShare:
    """Splits the budget (less its headroom) evenly over the GPUs; lifts every cap when the
    boards' own limits already fit."""

    name: ClassVar[str] = "doors-even"
    kind: ClassVar[str] = "powercap"
    description: ClassVar[str] = "An even share of the budget per GPU (a test plugin)."
    Params: ClassVar[type[BaseModel]] = ShareParams

    def decide(self, *, budget: Any, gpus: list[Any], params: ShareParams) -> PowerDecision:
        if not gpus:
            return PowerDecision(notes=["no GPUs"])
        share = budget.watts * (1 - params.headroom) / len(gpus)
        if all(gpu.max_watts <= share for gpu in gpus):
            return PowerDecision({(g.node, g.index): None for g in gpus}, ["the budget fits: caps lifted"])
        return PowerDecision({(g.node, g.index): share for g in gpus}, [f"{share:g} W per GPU"])


@hookimpl
def register_caches():
    return [LruCache()]


@hookimpl
def register_checkpointers():
    return [MemoryCheckpointer()]


@hookimpl
def register_powercaps():
    return [EvenShare()]
