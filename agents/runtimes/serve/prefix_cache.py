"""The prefix index of the paged KV cache: which resident blocks hold which token prefixes,
how many running requests read each, and which the cache plugin may evict.

Every block of the cache is in exactly one of three states:

- *free*: on the allocator's free list;
- *private*: in one running request's block table and not indexed -- still filling, or a
  full block whose hash another block already holds (two requests computed the same
  prefix in one step). Only its owner writes it, and it is freed when the owner leaves;
- *cached*: full, its k/v written, indexed by its chained hash
  (:func:`plugins.prefix_hash.block_hashes`, the function the router scores replicas
  with). It is read-only from then on and shared: ``ref_count`` running requests read
  it. At zero it stays resident -- a later prompt with the same prefix takes it again --
  and is freed only when the plugin's ``evict`` picks it.

So a shared block can never be written: the engine writes a position's k/v only into the
block that position's request holds privately, and a block becomes cached only once it
is full. The plugin sees plain :class:`plugins.types.CachedBlock` copies and answers with
block ids; the engine validates them, so a plugin bug cannot free a block someone reads.

Thread-safety: the engine thread mutates; HTTP threads read :meth:`stats` and
:meth:`hashes`. Both sides go through one lock, held only for the short bookkeeping
(and the plugin's quick decisions), never across a forward pass.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from agents.runtimes.plugin_choice import PluginChoice
from agents.runtimes.serve.kvcache import BlockAllocator
from plugins.prefix_hash import model_seed, next_hash
from plugins.types import CachedBlock, SessionTurn

log = logging.getLogger("flotilla.serve.prefix_cache")

# Sessions remembered (for their gaps between turns); the least recently seen go beyond it.
MAX_SESSIONS = 10_000
# Gaps kept per session: the plugin weighs recent behaviour, not a session's whole past.
MAX_GAPS = 8
# The most hashes GET /cache lists: enough for the router, bounded for a huge cache.
MAX_LISTED_HASHES = 65_536


def _copy(record: CachedBlock) -> CachedBlock:
    """A copy for the plugin (it must not be able to change ours); direct construction,
    several times cheaper than ``dataclasses.replace`` on a cache of many blocks."""
    r = record
    return CachedBlock(r.block_id, r.hash, r.last_used, r.ref_count, r.pinned_until, r.session, r.depth)


@dataclass
class SessionRecord:
    """What the engine remembers of a multi-turn session between its turns."""

    finished_at: float | None = None
    gaps: deque[float] = field(default_factory=lambda: deque(maxlen=MAX_GAPS))


class PrefixCache:
    """The hash index over a :class:`BlockAllocator`'s blocks, driven by a cache plugin.

    With no plugin, or one whose ``reuses_prefixes`` is False, nothing is ever indexed:
    every block a request held is freed when it leaves and the plugin is never asked.
    """

    def __init__(
        self,
        allocator: BlockAllocator,
        block_size: int,
        choice: PluginChoice | None = None,
        model_key: str = "builtin:tiny-llama",
        clock: Callable[[], float] = time.monotonic,
        max_sessions: int = MAX_SESSIONS,
    ):
        self.allocator = allocator
        self.block_size = block_size
        self.choice = choice
        self.enabled = choice is not None and bool(choice.impl.reuses_prefixes(params=choice.params))
        self.policy = choice.name if choice is not None else "off"
        self.model_key = model_key
        self.seed = model_seed(model_key)
        self.clock = clock
        self.max_sessions = max_sessions
        self._lock = threading.Lock()
        # Cached blocks, least recently used first (a touch moves a block to the end), so
        # GET /cache lists the most recent without sorting.
        self._blocks: OrderedDict[int, CachedBlock] = OrderedDict()
        self._by_hash: dict[int, int] = {}
        self._unreferenced: set[int] = set()
        self._pinned: set[int] = set()  # ever pinned and still cached; expired pins pruned lazily
        self._sessions: OrderedDict[str, SessionRecord] = OrderedDict()
        self.lookups = self.hits = self.misses = self.hit_tokens = self.prompt_tokens = 0
        self.evictions = self.pins_broken = 0

    # -- hashing and lookup -------------------------------------------------------------------

    def extend_hashes(self, hashes: list[int], tokens: Callable[[int, int], list[int]], full: int) -> None:
        """Extend ``hashes`` (a request's chain so far) to its first ``full`` blocks;
        ``tokens(start, end)`` gives the request's token ids. The chain equals
        ``block_hashes(ids, block_size, seed=model_seed(model_key))``."""
        bs = self.block_size
        for k in range(len(hashes), full):
            hashes.append(next_hash(hashes[-1] if hashes else self.seed, tokens(k * bs, (k + 1) * bs)))

    def match(self, hashes: list[int], limit: int) -> list[int]:
        """Block ids of the longest cached run of ``hashes[:limit]`` from the start (no refs taken)."""
        found: list[int] = []
        with self._lock:
            for h in hashes[:limit]:
                block = self._by_hash.get(h)
                if block is None:
                    break
                found.append(block)
        return found

    def record_lookup(self, prompt_tokens: int, hit_tokens: int) -> None:
        with self._lock:
            self.lookups += 1
            self.prompt_tokens += prompt_tokens
            self.hit_tokens += hit_tokens
            if hit_tokens:
                self.hits += 1
            else:
                self.misses += 1

    # -- references ---------------------------------------------------------------------------

    def acquire(self, blocks: Iterable[int]) -> None:
        """A request starts reading these cached blocks."""
        now = self.clock()
        with self._lock:
            for block in blocks:
                record = self._blocks[block]
                record.ref_count += 1
                record.last_used = now
                self._unreferenced.discard(block)
                self._blocks.move_to_end(block)

    def release(self, blocks: Iterable[int]) -> None:
        """A request leaves: cached blocks lose a reference (and stay resident), private
        ones are freed. Releasing more often than acquiring is a bug and raises."""
        now = self.clock()
        with self._lock:
            for block in blocks:
                record = self._blocks.get(block)
                if record is None:
                    self.allocator.free([block])
                    continue
                if record.ref_count <= 0:
                    raise RuntimeError(f"cached block {block} released more often than it was acquired")
                record.ref_count -= 1
                # read until now: LRU should see when a block was last in use, not first looked up
                record.last_used = now
                self._blocks.move_to_end(block)
                if record.ref_count == 0:
                    self._unreferenced.add(block)

    def commit(self, block: int, block_hash: int, depth: int, session: str | None) -> bool:
        """Index a private block that has just become full (its owner keeps its reference);
        False when another block holds that hash already, so this one stays private."""
        if not self.enabled:
            return False
        now = self.clock()
        with self._lock:
            if block_hash in self._by_hash:
                return False
            if block in self._blocks:
                raise RuntimeError(f"block {block} is cached already")
            self._blocks[block] = CachedBlock(
                block_id=block, hash=block_hash, last_used=now, ref_count=1, session=session, depth=depth
            )
            self._by_hash[block_hash] = block
            return True

    def is_cached(self, block: int) -> bool:
        return block in self._blocks

    def records(self) -> list[CachedBlock]:
        """Copies of every cached block's record, least recently used first."""
        with self._lock:
            return [_copy(r) for r in self._blocks.values()]

    # -- allocation and eviction --------------------------------------------------------------

    @property
    def evictable(self) -> int:
        """Cached blocks no running request reads: what an eviction could free."""
        return len(self._unreferenced)

    def allocate(self, count: int, force: bool = False) -> list[int] | None:
        """``count`` blocks: free ones first, then what the plugin evicts; None (nothing
        taken) when still short. ``force`` evicts least recently used blocks itself when the
        plugin frees too few -- for the engine with nothing running, which would otherwise
        never make progress."""
        self.make_free(count, force)
        return self.allocator.allocate(count)

    def make_free(self, count: int, force: bool = False) -> None:
        """Evict until ``count`` blocks are free, as far as the plugin allows."""
        short = count - self.allocator.free_count
        if short <= 0 or not self.enabled or not self._unreferenced:
            return
        freed = self._evict(short)
        if force and freed < short:
            with self._lock:
                rest = [b for b in self._blocks if b in self._unreferenced][: short - freed]
            if rest:
                log.warning(
                    "cache plugin %s freed %d of %d blocks with nothing running; evicting %d LRU blocks",
                    self.policy, freed, short, len(rest),
                )  # fmt: skip
                self._free_blocks(rest, self.clock())

    def trim(self) -> None:
        """After requests finish: the plugin drops what it keeps no longer (``needed=0``)."""
        if self.enabled and self._unreferenced:
            self._evict(0)

    def _evict(self, needed: int) -> int:
        """Ask the plugin which unreferenced blocks go and free the valid ones; how many."""
        assert self.choice is not None
        now = self.clock()
        with self._lock:
            candidates = [_copy(r) for r in self._blocks.values() if r.ref_count == 0]
        if not candidates:
            return 0
        try:
            chosen = self.choice.impl.evict(
                blocks=candidates,
                needed=needed,
                now=now,
                total_blocks=self.allocator.num_blocks,
                params=self.choice.params,
            )
        except Exception:  # a plugin bug must not take the engine down: keep everything cached
            log.exception("cache plugin %s failed in evict(needed=%d)", self.policy, needed)
            return 0
        return self._free_blocks(chosen or [], now)

    def _free_blocks(self, chosen: Iterable[int], now: float) -> int:
        freed = 0
        with self._lock:
            for block in chosen:
                # only unreferenced cached blocks may go: anything else is a plugin mistake
                if not isinstance(block, int) or block not in self._unreferenced:
                    continue
                record = self._blocks.pop(block)
                del self._by_hash[record.hash]  # type: ignore[arg-type]
                self._unreferenced.discard(block)
                self._pinned.discard(block)
                if record.pinned_until > now:
                    self.pins_broken += 1
                self.allocator.free([block])
                freed += 1
            self.evictions += freed
        return freed

    # -- sessions -----------------------------------------------------------------------------

    def end_turn(self, session: str, hashes: list[int], arrived_at: float) -> float:
        """A session's turn finished (stop or length) having written the blocks named
        ``hashes``: remember the gap since its last turn and pin the blocks now holding
        those hashes for as long as the plugin says. Returns the TTL (0: not pinned)."""
        assert self.choice is not None
        now = self.clock()
        with self._lock:
            record = self._sessions.pop(session, None) or SessionRecord()
            if record.finished_at is not None and arrived_at >= record.finished_at:
                record.gaps.append(arrived_at - record.finished_at)  # overlapping turns have no gap
            record.finished_at = now
            self._sessions[session] = record
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
            blocks = [self._by_hash[h] for h in hashes if h in self._by_hash]
            mine = set(blocks)
            pinned = {b for b in self._pinned if self._blocks[b].pinned_until > now}
            total = self.allocator.num_blocks
            busy = self.allocator.used_count - len(self._unreferenced - pinned)
            turn = SessionTurn(
                session=session,
                blocks=blocks,
                gaps=list(record.gaps),
                memory_in_use=busy / total,
                pinned_share=len(pinned - mine) / total,
                total_blocks=total,
            )
        try:
            ttl = float(self.choice.impl.pin_seconds(turn=turn, params=self.choice.params))
        except Exception:
            log.exception("cache plugin %s failed in pin_seconds", self.policy)
            return 0.0
        if not math.isfinite(ttl) or ttl <= 0:
            return 0.0
        with self._lock:
            for block in blocks:
                record_ = self._blocks.get(block)
                if record_ is None:
                    continue
                record_.pinned_until = max(record_.pinned_until, now + ttl)
                record_.session = session
                self._pinned.add(block)
        return ttl

    # -- what HTTP threads read ---------------------------------------------------------------

    def hashes(self, limit: int = MAX_LISTED_HASHES) -> list[int]:
        """Hashes of the resident cached blocks, most recently used first."""
        with self._lock:
            out: list[int] = []
            for record in reversed(self._blocks.values()):
                if len(out) >= limit:
                    break
                out.append(record.hash)  # type: ignore[arg-type]
            return out

    def stats(self) -> dict[str, int | str]:
        now = self.clock()
        with self._lock:
            self._pinned = {b for b in self._pinned if self._blocks[b].pinned_until > now}
            return {
                "policy": self.policy,
                "lookups": self.lookups,
                "hits": self.hits,
                "misses": self.misses,
                "hitTokens": self.hit_tokens,
                "promptTokens": self.prompt_tokens,
                "evictions": self.evictions,
                "pinsBroken": self.pins_broken,
                "cachedBlocks": len(self._blocks),
                "pinnedBlocks": len(self._pinned),
                "sessions": len(self._sessions),
            }
