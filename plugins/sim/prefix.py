"""Prefix caching in the simulator: which prompt blocks an instance still holds, so that a
request prefills only the tokens after its cached prefix.

It follows the serving engine's block-level prefix cache (issue 11): a full prompt block
is named by the chained hash of its tokens (``plugins.prefix_hash``), so two prompts share
block ``i`` exactly when they share every token up to its end. A cached block is shared
read-only by every running request that starts with it and counted by reference; when no
running request holds it, it stays cached -- and counts as free, since any allocation may
take it back -- until the eviction rule gives it up:

- least recently used first, and among blocks released together the deepest first, so a
  shared head outlives the tails hanging off it (``plugins.eviction``'s ``prefix-lru``);
- session pins (Continuum, ``session-ttl``): the blocks of a session's finished turn stay
  pinned for the seconds ``pin_seconds`` chooses from the session's gaps between turns
  (a block other requests still read keeps its pin for when they let go); under pressure
  unpinned blocks go first, then pins, the soonest to expire first;
- ``capacity_share``: after a request finishes, unpinned cached blocks beyond that share
  of the pool go at once.

A request names its sequence's full blocks in ``Request.block_hashes`` (any ints: equal
names, equal contents): its prompt's, and optionally those its output fills, which the
engine caches too and a session's next turn, whose prompt repeats the answer, can reuse.

Stdlib only, like the rest of the simulator: the TTL rule comes in as a callable (the
bench passes the cache plugin's own ``pin_seconds``), not by importing ``plugins.types``,
which needs pydantic.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Turn:
    """A session's turn has just ended on an instance: what a TTL rule decides a pin from.

    The simulator's copy of ``plugins.types.SessionTurn`` (which it cannot import), with
    ``blocks`` as a count: a rule weighs how many, never which.
    """

    session: str
    blocks: int
    gaps: tuple[float, ...]  # seconds between this session's turns seen here, oldest first
    memory_in_use: float  # share of the pool held by running requests or pinned, 0..1
    pinned_share: float  # share of the pool pinned for sessions now, this turn's not counted
    total_blocks: int


PinSeconds = Callable[[Turn], float]


@dataclass(frozen=True)
class PrefixCache:
    """How every simulated instance keeps prompt blocks between requests.

    ``pin_seconds`` None is plain LRU (``prefix-lru``); a rule returning 0 pins nothing.
    A simulation without a PrefixCache reuses nothing (the ``none`` baseline).
    """

    capacity_share: float = 1.0
    pin_seconds: PinSeconds | None = None

    def __post_init__(self) -> None:
        if not 0 < self.capacity_share <= 1:
            raise ValueError(f"capacity_share must be within (0, 1], got {self.capacity_share!r}")


@dataclass
class _Session:
    last_end: float | None = None
    gaps: list[float] = field(default_factory=list)


class BlockCache:
    """One instance's cached prompt blocks, by name: those running requests hold (with their
    reference counts), and the idle ones -- unpinned in LRU order, pinned with an expiry.

    The instance keeps the block arithmetic (``free`` counts idle blocks as free); this
    class only says which names are held, and which idle ones to give up when the instance
    needs their space.
    """

    def __init__(self, policy: PrefixCache, total_blocks: int):
        self.policy = policy
        self.total_blocks = total_blocks
        self.refs: dict[int, int] = {}
        self.lru: OrderedDict[int, float] = OrderedDict()  # name -> when it was last used
        self.pins: dict[int, tuple[float, float]] = {}  # idle pinned: name -> (pinned until, last used)
        self.until: dict[int, float] = {}  # every pin set, on held blocks too: name -> pinned until
        self._expiry: list[tuple[float, int]] = []  # (pinned until, name), stale entries included
        self.sessions: dict[str, _Session] = {}
        self.hits = self.misses = self.hit_tokens = self.prompt_tokens = 0
        self.evictions = self.pins_broken = 0
        self._evicted_age = 0.0

    # -- what is held --------------------------------------------------------------------

    def __contains__(self, name: object) -> bool:
        return name in self.refs or name in self.lru or name in self.pins

    def __iter__(self) -> Iterator[int]:
        yield from self.refs
        yield from self.lru
        yield from self.pins

    def __len__(self) -> int:
        return len(self.refs) + len(self.lru) + len(self.pins)

    @property
    def idle(self) -> int:
        """Cached blocks no running request holds: free space that still has contents."""
        return len(self.lru) + len(self.pins)

    def match(self, names: tuple[int, ...], limit: int) -> list[int]:
        """The leading run of ``names`` (at most ``limit``) that is cached."""
        run: list[int] = []
        for name in names[:limit]:
            if name not in self:
                break
            run.append(name)
        return run

    def held(self, names: list[int]) -> int:
        """How many of ``names`` a running request holds already (they cost no free block)."""
        return sum(1 for name in names if name in self.refs)

    # -- a request takes and gives back --------------------------------------------------

    def acquire(self, names: list[int]) -> int:
        """Reference ``names`` (all cached); returns how many were idle, which stop being free."""
        woken = 0
        for name in names:
            if name in self.refs:
                self.refs[name] += 1
                continue
            woken += 1
            if self.lru.pop(name, None) is None:
                del self.pins[name]  # its pin stays in ``until`` for when it is let go again
            self.refs[name] = 1
        return woken

    def register(self, name: int) -> bool:
        """A request has just computed block ``name``: cache it, held by that request.
        False when it is cached already (another request computed it too; its copy stays private)."""
        if name in self:
            return False
        self.refs[name] = 1
        return True

    def count_lookup(self, hit_tokens: int, prompt_tokens: int) -> None:
        """One request's first prefill: how much of its prompt came from the cache."""
        self.hit_tokens += hit_tokens
        self.prompt_tokens += prompt_tokens
        if hit_tokens:
            self.hits += 1
        else:
            self.misses += 1

    def release(self, names: list[int], now: float, session: str | None, held_blocks: int) -> int:
        """A request lets go of ``names``; returns how many no running request holds now (they
        become free). A finished turn of ``session`` pins them all for as long as the rule says;
        ``held_blocks`` is how many blocks running requests hold, for the rule's view of memory."""
        if session is not None and self.policy.pin_seconds is not None and names:
            self._pin(names, now, session, held_blocks)
        idle = []
        for name in reversed(names):  # deepest first: among equals, LRU gives up the deepest first
            count = self.refs[name] - 1
            if count:
                self.refs[name] = count
            else:
                del self.refs[name]
                idle.append(name)
        for name in idle:
            until = self.until.get(name, 0.0)
            if until > now:
                self.pins[name] = (until, now)
                heapq.heappush(self._expiry, (until, name))
            else:
                self.until.pop(name, None)
                self.lru[name] = now
        return len(idle)

    def _pin(self, names: list[int], now: float, session: str, held_blocks: int) -> None:
        assert self.policy.pin_seconds is not None
        total = self.total_blocks
        for name in [n for n, until in self.until.items() if until <= now]:
            del self.until[name]
        mine = set(names)
        others = sum(1 for name in self.until if name not in mine)
        turn = Turn(
            session, len(names), tuple(self._session(session).gaps),
            (held_blocks + len(self.pins)) / total, others / total, total,
        )  # fmt: skip
        seconds = self.policy.pin_seconds(turn)
        if seconds > 0:
            for name in names:
                self.until[name] = max(self.until.get(name, 0.0), now + seconds)

    # -- sessions ------------------------------------------------------------------------

    def _session(self, session: str) -> _Session:
        return self.sessions.setdefault(session, _Session())

    def arrive(self, session: str, now: float) -> None:
        """A turn of ``session`` arrived: the gap since its previous turn ended here is one
        the TTL rule learns from."""
        known = self._session(session)
        if known.last_end is not None:
            known.gaps.append(max(0.0, now - known.last_end))

    def turn_ended(self, session: str, now: float) -> None:
        self._session(session).last_end = now

    # -- giving blocks up ----------------------------------------------------------------

    def _expire(self, now: float) -> None:
        """Pins that ran out become the least recently used blocks, the first expired first."""
        expired = []
        while self._expiry and self._expiry[0][0] <= now:
            until, name = heapq.heappop(self._expiry)
            if self.pins.get(name, (None,))[0] == until:
                expired.append((name, self.pins.pop(name)[1]))
                self.until.pop(name, None)
        for name, used in reversed(expired):
            self.lru[name] = used
            self.lru.move_to_end(name, last=False)

    def evict(self, count: int, now: float) -> None:
        """Give up ``count`` idle blocks: unpinned ones least recently used first, then pins
        the soonest to expire first."""
        self._expire(now)
        for _ in range(count):
            if self.lru:
                _, used = self.lru.popitem(last=False)
            else:
                until, name = heapq.heappop(self._expiry)
                while self.pins.get(name, (None,))[0] != until:
                    until, name = heapq.heappop(self._expiry)
                used = self.pins.pop(name)[1]
                self.until.pop(name, None)
                self.pins_broken += 1
            self.evictions += 1
            self._evicted_age += now - used

    def trim(self, now: float) -> None:
        """After a request finishes: unpinned idle blocks beyond ``capacity_share`` go."""
        if self.policy.capacity_share >= 1:
            return
        self._expire(now)
        over = len(self.lru) - int(self.policy.capacity_share * self.total_blocks)
        if over > 0:
            self.evict(over, now)

    def stats(self) -> dict[str, float]:
        """The engine's ``prefixCache`` figures, plus how long an evicted block had sat idle:
        the time the cache keeps a prefix nobody uses (what a session's think time must beat)."""
        return {
            "hits": self.hits,
            "misses": self.misses,
            "hitTokens": self.hit_tokens,
            "promptTokens": self.prompt_tokens,
            "evictions": self.evictions,
            "pinsBroken": self.pins_broken,
            "cachedBlocks": len(self),
            "pinnedBlocks": len(self.pins),
            "meanEvictedIdleS": self._evicted_age / self.evictions if self.evictions else 0.0,
        }


def merge_stats(parts: list[dict[str, float]]) -> dict[str, float]:
    """Instances' :meth:`BlockCache.stats` summed (the idle age weighted by evictions), with
    the hit rate the bench reports: hit tokens over prompt tokens."""
    keys = ("hits", "misses", "hitTokens", "promptTokens", "evictions", "pinsBroken", "cachedBlocks",
            "pinnedBlocks")  # fmt: skip
    merged: dict[str, float] = {key: sum(p[key] for p in parts) for key in keys}
    evictions = merged["evictions"]
    age = sum(p["meanEvictedIdleS"] * p["evictions"] for p in parts)
    merged["meanEvictedIdleS"] = age / evictions if evictions else 0.0
    merged["hitRate"] = merged["hitTokens"] / merged["promptTokens"] if merged["promptTokens"] else 0.0
    return merged


def shared_prefix_hashes(
    shared_tokens: int, input_tokens: int, block_size: int, unique: int
) -> tuple[int, ...]:
    """Block names for a prompt of ``input_tokens`` whose first ``shared_tokens`` every such
    prompt shares (a system prompt) and whose rest is its own (``unique`` tells prompts apart).

    What ``flotilla plan`` simulates for ``spec.workload.sharedPrefixTokens``. At least one
    token of a prompt is always computed, so the shared run stops a block short of a prompt
    that is all prefix.
    """
    full = input_tokens // block_size
    shared = min(shared_tokens, max(0, input_tokens - 1)) // block_size
    own = -(unique + 1) << 32  # negative, and apart from every other prompt's
    return tuple(range(1, shared + 1)) + tuple(own - j for j in range(shared, full))
