"""Built-in cache plugins: a KV-cache eviction rule and a request routing rule per name.

A cache plugin answers two questions for a Deployment (DESIGN §5): how each replica's
KV cache keeps and evicts prefix blocks, and which replica a request goes to. The six
built-in names are the six rules; each fills the other half from its parameters:

============  ===========================  ==================================
name          fixed half                   the other half (parameter, default)
============  ===========================  ==================================
round-robin   routing: each in turn        ``eviction``, ``none``
least-loaded  routing: fewest in flight    ``eviction``, ``prefix-lru``
prefix-aware  routing: longest prefix      ``eviction``, ``prefix-lru``
none          eviction: no reuse           ``routing``, ``round-robin``
prefix-lru    eviction: LRU                ``routing``, ``prefix-aware``
session-ttl   eviction: Continuum pins     ``routing``, ``prefix-aware``
============  ===========================  ==================================

so ``policies: {cache: prefix-aware}`` is prefix routing over LRU prefix caches, and a
Policy ``{plugin: prefix-aware, params: {eviction: session-ttl}}`` adds session pins.
The rules themselves are ``plugins/eviction.py`` and ``plugins/routing.py``.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from plugins.eviction import Eviction, choose_victims, session_ttl
from plugins.hookspecs import hookimpl
from plugins.routing import Rotation, Routing, choose_replica
from plugins.types import CachedBlock, ReplicaLoad, RouteRequest, SessionTurn


class CacheTuning(BaseModel):
    """The numbers every cache plugin takes (each rule reads the ones it uses)."""

    model_config = ConfigDict(extra="forbid")

    capacityShare: float = Field(
        default=1.0,
        gt=0.0,
        le=1.0,
        description="Largest share of a replica's KV blocks that finished requests' prefixes may keep; "
        "beyond it the least recently used go at once (prefix-lru, session-ttl).",
    )
    ttlMinSeconds: float = Field(
        default=1.0, ge=0.0, le=86400.0, description="Shortest session pin (session-ttl)."
    )
    ttlMaxSeconds: float = Field(
        default=300.0, ge=0.0, le=86400.0, description="Longest session pin (session-ttl)."
    )
    ttlFirstTurnSeconds: float = Field(
        default=30.0,
        ge=0.0,
        le=86400.0,
        description="Pin after a session's first turn, before any gap between its turns is known.",
    )
    ttlGapMultiplier: float = Field(
        default=1.5,
        gt=0.0,
        le=100.0,
        description="Pin for this many times the longest of the session's last three gaps between turns.",
    )
    pinShare: float = Field(
        default=0.5,
        gt=0.0,
        le=1.0,
        description="Largest share of a replica's KV blocks that session pins may hold; a turn that "
        "would exceed it is not pinned.",
    )
    loadWeight: float = Field(
        default=0.5,
        ge=0.0,
        le=100.0,
        description="prefix-aware: how much a replica's relative load counts against its prefix share "
        "(0: prefix only).",
    )
    maxImbalance: int = Field(
        default=4,
        ge=0,
        le=10000,
        description="prefix-aware: never send a request to a replica with more than this many requests "
        "beyond the least loaded one.",
    )

    @model_validator(mode="after")
    def _bounds(self) -> CacheTuning:
        if self.ttlMinSeconds > self.ttlMaxSeconds:
            raise ValueError(
                f"ttlMinSeconds ({self.ttlMinSeconds}) must not exceed ttlMaxSeconds ({self.ttlMaxSeconds})"
            )
        return self


def _router_params(name: str, default: Eviction) -> type[CacheTuning]:
    class Params(CacheTuning):
        eviction: Eviction = Field(default=default, description="How each replica's KV cache keeps prefixes.")

    Params.__name__ = Params.__qualname__ = f"{name.title().replace('-', '')}Params"
    return Params


def _eviction_params(name: str, default: Routing) -> type[CacheTuning]:
    class Params(CacheTuning):
        routing: Routing = Field(default=default, description="Which replica a request goes to.")

    Params.__name__ = Params.__qualname__ = f"{name.title().replace('-', '')}Params"
    return Params


class Cache:
    """One named cache plugin: an eviction rule and a routing rule, one of them fixed."""

    kind: ClassVar[str] = "cache"

    def __init__(
        self,
        name: str,
        description: str,
        params: type[CacheTuning],
        routing: Routing | None = None,
        eviction: Eviction | None = None,
    ):
        self.name = name
        self.description = description
        self.Params = params
        self._routing, self._eviction = routing, eviction
        self._rotation = Rotation()

    def eviction_of(self, params: BaseModel) -> Eviction:
        return self._eviction or params.eviction  # type: ignore[attr-defined]

    def routing_of(self, params: BaseModel) -> Routing:
        return self._routing or params.routing  # type: ignore[attr-defined]

    def reuses_prefixes(self, *, params: BaseModel) -> bool:
        return self.eviction_of(params) != "none"

    def evict(
        self, *, blocks: list[CachedBlock], needed: int, now: float, total_blocks: int, params: BaseModel
    ) -> list[int]:
        assert isinstance(params, CacheTuning)
        return choose_victims(
            self.eviction_of(params), blocks, needed, now, total_blocks, params.capacityShare
        )

    def pin_seconds(self, *, turn: SessionTurn, params: BaseModel) -> float:
        assert isinstance(params, CacheTuning)
        if self.eviction_of(params) != "session-ttl":
            return 0.0
        return session_ttl(
            turn,
            min_seconds=params.ttlMinSeconds,
            max_seconds=params.ttlMaxSeconds,
            first_turn_seconds=params.ttlFirstTurnSeconds,
            gap_multiplier=params.ttlGapMultiplier,
            pin_share=params.pinShare,
        )

    def route(self, *, request: RouteRequest, replicas: list[ReplicaLoad], params: BaseModel) -> str:
        assert isinstance(params, CacheTuning)
        chosen = choose_replica(
            self.routing_of(params), request, replicas, self._rotation, params.loadWeight, params.maxImbalance
        )
        return chosen.name


def builtin_caches() -> list[Cache]:
    return [
        Cache(
            "round-robin",
            "Each ready replica in turn, as a plain load balancer does (the baseline); "
            "no prefix reuse unless eviction says so.",
            _router_params("round-robin", "none"),
            routing="round-robin",
        ),
        Cache(
            "least-loaded",
            "The replica with the fewest requests queued and running; LRU prefix caches.",
            _router_params("least-loaded", "prefix-lru"),
            routing="least-loaded",
        ),
        Cache(
            "prefix-aware",
            "The replica holding the longest prefix of the request's tokens, traded against load; "
            "LRU prefix caches.",
            _router_params("prefix-aware", "prefix-lru"),
            routing="prefix-aware",
        ),
        Cache(
            "none",
            "No prefix reuse: every request prefills its whole prompt (the no-cache baseline).",
            _eviction_params("none", "round-robin"),
            eviction="none",
        ),
        Cache(
            "prefix-lru",
            "Block-level prefix caching; unreferenced blocks evicted least recently used first.",
            _eviction_params("prefix-lru", "prefix-aware"),
            eviction="prefix-lru",
        ),
        Cache(
            "session-ttl",
            "Continuum: a session's blocks stay pinned for a TTL learnt from its gaps between turns, "
            "capped by a share of the cache, released early under memory pressure.",
            _eviction_params("session-ttl", "prefix-aware"),
            eviction="session-ttl",
        ),
    ]


@hookimpl
def register_caches():
    return builtin_caches()
