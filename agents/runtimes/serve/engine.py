"""Continuous batching over a paged KV cache.

Every :meth:`Engine.step` re-forms the batch: finished and cancelled requests leave, each
running request gets one decode token, and waiting requests are admitted (prefilled, first
token sampled) while the batch and the KV blocks allow. A background thread runs steps;
``submit`` is thread-safe and returns a :class:`Request` handle to stream from or wait on.

Memory policy: a request is admitted only when blocks for its whole sequence so far plus
one more token are free. When a running request needs a new block and none is free, the
most recently admitted *other* running request is preempted: its blocks are freed and it
goes back to the front of the queue, to be re-prefilled (prompt + tokens so far) later --
recompute preemption, as in vLLM. Requests that could never fit the cache are rejected at
submit, so the oldest request always makes progress.

Prefix caching (with a cache plugin whose ``reuses_prefixes`` is true): every full block is
indexed by its chained hash as soon as its k/v are written, and shared read-only between
requests (``prefix_cache.py``). A request whose prompt starts with cached blocks takes
references on them and prefills only the rest -- always at least its last token, whose
logits give the first output token, so when the whole prompt is cached its last block is
recomputed into a fresh block rather than written in place. Blocks nobody reads stay cached
until the plugin's ``evict`` picks them: on a shortage free blocks go first, then what the
plugin evicts (session pins included, at its word), and only then is a request preempted.
Admission counts evictable blocks as available. A session's finished turn asks the plugin
how long to pin its blocks for the next turn.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable

import torch

from agents.runtimes.model import ModelConfig, Transformer
from agents.runtimes.plugin_choice import PluginChoice
from agents.runtimes.serve.kvcache import DEFAULT_BLOCK_SIZE, PagedKVCache
from agents.runtimes.serve.metrics import LENGTH_COUNTED_REASONS, ServingMetrics
from agents.runtimes.serve.prefix_cache import MAX_LISTED_HASHES, PrefixCache
from agents.runtimes.serve.request import Request
from agents.runtimes.serve.sampling import SamplingParams, greedy_batch, sample
from agents.runtimes.tokenizer import ByteTokenizer, FileTokenizer

log = logging.getLogger("flotilla.serve.engine")
# How often, at most, the cache plugin is asked what to drop (evict needed=0) under load.
TRIM_INTERVAL_S = 0.25


class EngineClosed(RuntimeError):
    """The engine is shutting down and takes no new requests."""


def default_kv_blocks(config: ModelConfig, dtype: torch.dtype, device: torch.device, max_batch: int) -> int:
    """Enough blocks for ``max_batch`` full-length sequences, capped by a memory budget
    (30% of free GPU memory on CUDA, 1 GiB elsewhere)."""
    wanted = max_batch * math.ceil(config.maxSeqLen / DEFAULT_BLOCK_SIZE)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = int(free * 0.3)
    else:
        budget = 1 << 30
    return max(1, min(wanted, PagedKVCache.blocks_for_budget(config, dtype, budget)))


class Engine:
    """The scheduler and its KV cache. Use ``start()`` for a background loop, or ``step()`` directly."""

    def __init__(
        self,
        model: Transformer,
        kv_blocks: int | None = None,
        max_batch: int = 32,
        max_prefill_tokens: int = 4096,
        block_size: int = DEFAULT_BLOCK_SIZE,
        tokenizer: ByteTokenizer | FileTokenizer | None = None,
        cache: PluginChoice | None = None,
        model_key: str = "builtin:tiny-llama",
        clock: Callable[[], float] = time.monotonic,
    ):
        """``cache`` is the cache plugin (None: no prefix caching); ``model_key`` the model's
        ``source``, which seeds the block hashes exactly as the router seeds its own;
        ``clock`` the monotonic clock the plugin's ``now`` and the session gaps are read on."""
        self.model = model
        self.config: ModelConfig = model.config
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        if kv_blocks is None:
            kv_blocks = default_kv_blocks(self.config, self.dtype, self.device, max_batch)
        self.cache = PagedKVCache(self.config, kv_blocks, self.device, self.dtype, block_size)
        self.model_key = model_key
        self.clock = clock
        self.prefix = PrefixCache(self.cache.allocator, block_size, cache, model_key, clock)
        self._trim_due = False  # a request finished: the plugin may drop blocks (evict needed=0)
        self._trimmed_at = -math.inf
        self.max_batch = max_batch
        self.max_prefill_tokens = max_prefill_tokens
        self.tokenizer = tokenizer or ByteTokenizer()
        self.metrics = ServingMetrics()
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self._cond = threading.Condition()
        self._closed = False
        self._abort_at: float | None = None
        self._thread: threading.Thread | None = None
        self.steps = 0

    # -- submission -------------------------------------------------------------------------

    def submit(
        self, prompt_ids: list[int], params: SamplingParams | None = None, session: str | None = None
    ) -> Request:
        """Queue a generation (a turn of ``session``, if given); raises ValueError if it can
        never fit, EngineClosed when stopping."""
        params = params or SamplingParams()
        params.validate()
        if not prompt_ids:
            raise ValueError("prompt must have at least one token")
        if len(prompt_ids) >= self.config.maxSeqLen:
            raise ValueError(
                f"prompt has {len(prompt_ids)} tokens; the model's maxSeqLen is {self.config.maxSeqLen}"
            )
        if any(not 0 <= t < self.config.vocabSize for t in prompt_ids):
            raise ValueError("prompt has token ids outside the vocabulary")
        longest = min(len(prompt_ids) + params.max_tokens, self.config.maxSeqLen)
        if math.ceil((longest + 1) / self.cache.block_size) > self.cache.num_blocks:
            raise ValueError(
                f"a request of {longest} tokens cannot fit the KV cache ({self.cache.num_blocks} blocks)"
            )
        request = Request(prompt_ids, params, self.tokenizer, session=session, arrived_at=self.clock())
        with self._cond:
            if self._closed:
                raise EngineClosed("the engine is shutting down")
            self.waiting.append(request)
            self._cond.notify_all()
        return request

    # -- the scheduler ----------------------------------------------------------------------

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    @torch.inference_mode()
    def step(self) -> int:
        """One scheduling iteration; returns how many tokens it generated."""
        self.steps += 1
        for request in [r for r in self.running if r.cancelled]:
            self._finish(request, "cancelled")
        with self._cond:
            for request in [r for r in self.waiting if r.cancelled]:
                self.waiting.remove(request)
                request.finish("cancelled")
        decode = self._reserve_decode()
        prefill = self._admit()
        generated = 0
        for group in (decode, prefill):
            if group:
                try:
                    generated += self._run(group)
                except Exception:  # a failing batch must not take the server down
                    log.exception("engine step failed; failing %d requests", len(group))
                    for request in group:
                        self._finish(request, "error")
        if generated:
            self.metrics.record_tokens(generated)
        self._trim()
        return generated

    def _reserve_decode(self) -> list[Request]:
        """Blocks for one more token for each running request, preempting the newest on shortage."""
        ready: list[Request] = []
        # one eviction for the whole batch's shortage rather than one per request
        self.prefix.make_free(sum(r.table.blocks_needed(r.seq_len) for r in self.running if r.table))
        for request in list(self.running):
            if request not in self.running:  # preempted by an older request this step
                continue
            while not self._grow(request, request.seq_len):
                victim = self.running[-1]
                self._preempt(victim)
                if victim is request:
                    break
            else:
                ready.append(request)
        return ready

    def _admit(self) -> list[Request]:
        """Move waiting requests into the batch while slots, blocks and the prefill budget allow."""
        admitted: list[Request] = []
        longest = 0
        with self._cond:
            while self.waiting and len(self.running) < self.max_batch:
                request = self.waiting[0]
                longest = max(longest, request.seq_len)
                if admitted and longest * (len(admitted) + 1) > self.max_prefill_tokens:
                    break
                if not self._place(request, force=not self.running):
                    break
                self.waiting.popleft()
                self.running.append(request)
                admitted.append(request)
        return admitted

    def _place(self, request: Request, force: bool) -> bool:
        """Give a waiting request its blocks: cached ones for the longest prefix it shares
        (never its last token's block), fresh ones for the rest, with room for one more token.

        ``force`` (nothing is running) lets the cache evict past a reluctant plugin, or
        the engine would wait forever for blocks that only an eviction can free."""
        table = request.table = request.table or self.cache.new_table()
        n, bs = request.seq_len, self.cache.block_size
        reused: list[int] = []
        if self.prefix.enabled:
            self.prefix.extend_hashes(request.hashes, request.tokens, n // bs)
            reused = self.prefix.match(request.hashes, (n - 1) // bs)
            self.prefix.acquire(reused)
        headroom = math.ceil((n + 1) / bs) - len(reused)
        fresh = None
        if headroom <= self.cache.allocator.free_count + self.prefix.evictable:
            fresh = self.prefix.allocate(math.ceil(n / bs) - len(reused), force=force)
        if fresh is None:
            self.prefix.release(reused)
            return False
        table.blocks = reused + fresh
        request.slots = table.slots(0, n)
        request.committed, request.cached = len(reused), len(reused) * bs
        if request.cached_tokens is None:  # counted once, not again after a preemption
            request.cached_tokens = request.cached
            if self.prefix.enabled:
                self.prefix.record_lookup(len(request.prompt_ids), request.cached)
        return True

    def _grow(self, request: Request, tokens: int) -> bool:
        table = request.table
        if table is None:
            table = request.table = self.cache.new_table()
        needed = table.blocks_needed(tokens)
        if needed:
            blocks = self.prefix.allocate(needed)
            if blocks is None:
                return False
            table.blocks.extend(blocks)
        if len(request.slots) < tokens:
            request.slots.extend(table.slots(len(request.slots), tokens))
        return True

    def _commit(self, request: Request) -> None:
        """Offer the request's newly full blocks (k/v just written) to the prefix index."""
        full = request.cached // self.cache.block_size
        if full <= request.committed or request.table is None:
            return
        self.prefix.extend_hashes(request.hashes, request.tokens, full)
        for k in range(request.committed, full):
            self.prefix.commit(request.table.blocks[k], request.hashes[k], k, request.session)
        request.committed = full

    def _preempt(self, request: Request) -> None:
        log.info("preempting %s at %d tokens (KV cache full)", request.id, request.seq_len)
        self.running.remove(request)
        self._release(request)
        request.preemptions += 1
        with self._cond:
            self.waiting.appendleft(request)

    def _release(self, request: Request) -> None:
        if request.table is not None:
            blocks, request.table.blocks = request.table.blocks, []
            self.prefix.release(blocks)
        request.slots, request.cached, request.committed = [], 0, 0

    def _finish(self, request: Request, reason: str) -> None:
        if request in self.running:
            self.running.remove(request)
        turn = request.hashes[: request.committed]
        self._release(request)
        if self.prefix.enabled:
            if request.session is not None and reason in LENGTH_COUNTED_REASONS:
                self.prefix.end_turn(request.session, turn, request.arrived_at)
            self._trim_due = True
        request.finish(reason)
        self.metrics.record_finish(
            reason, len(request.prompt_ids), request.ttft, request.tpot, len(request.output_ids)
        )

    def _trim(self) -> None:
        """At most once per ``TRIM_INTERVAL_S`` while requests run (at once when none do), not
        per finished request: the plugin looks at every unreferenced block each time, which
        on a cache of 50,000 blocks costs ~0.1 s of CPU -- more than a GPU decode step. The
        cap it enforces is a soft one (a shortage evicts on the spot anyway), so trimming
        late by a fraction of a second loses nothing."""
        if not self._trim_due:
            return
        now = self.clock()
        if self.running and now - self._trimmed_at < TRIM_INTERVAL_S:
            return
        self._trim_due, self._trimmed_at = False, now
        self.prefix.trim()

    def _run(self, group: list[Request]) -> int:
        """Feed each request its uncached tokens in one padded forward, then sample one token each."""
        rows = len(group)
        width = max(r.seq_len - r.cached for r in group)
        length = max(r.seq_len for r in group)
        tokens = [[self.tokenizer.PAD] * width for _ in range(rows)]
        positions = [[0] * width for _ in range(rows)]
        write = [[-1] * width for _ in range(rows)]
        read = [[0] * length for _ in range(rows)]
        for i, r in enumerate(group):
            for j, pos in enumerate(range(r.cached, r.seq_len)):
                tokens[i][j], positions[i][j], write[i][j] = r.token_at(pos), pos, r.slots[pos]
            read[i][: r.seq_len] = r.slots[: r.seq_len]
        as_tensor = lambda data: torch.tensor(data, dtype=torch.long, device=self.device)  # noqa: E731
        logits = self.model.forward_cached(
            as_tensor(tokens), as_tensor(positions), as_tensor(write), as_tensor(read),
            as_tensor([r.seq_len for r in group]), self.cache.kv,
            as_tensor([r.seq_len - r.cached - 1 for r in group]),
        )  # fmt: skip
        greedy = greedy_batch(logits)
        now = time.monotonic()
        for i, r in enumerate(group):
            r.cached = r.seq_len
            if self.prefix.enabled:
                self._commit(r)
            token = greedy[i] if r.generator is None else sample(logits[i], r.params, r.generator)
            if r.first_token_at is None:
                r.first_token_at = now
            reason = r.append(token)
            if reason is None and r.seq_len >= self.config.maxSeqLen:
                reason = "length"
            if reason is not None:
                self._finish(r, reason)
        return rows

    # -- the background loop ----------------------------------------------------------------

    def start(self) -> Engine:
        self._thread = threading.Thread(target=self._loop, name="flotilla-engine", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self.has_work() and not self._closed:
                    self._cond.wait()
                if self._closed and (not self.has_work() or time.monotonic() >= (self._abort_at or 0)):
                    break
            self.step()
        self._abort_all()

    def _abort_all(self) -> None:
        for request in list(self.running):
            self._finish(request, "abort")
        with self._cond:
            waiting, self.waiting = list(self.waiting), deque()
        for request in waiting:
            request.finish("abort")
            self.metrics.record_finish("abort", len(request.prompt_ids), None, None)
        self._trim()

    def stop(self, drain_s: float = 5.0) -> None:
        """Take no new requests; let in-flight ones finish for up to ``drain_s``, then abort the rest."""
        with self._cond:
            self._closed = True
            self._abort_at = time.monotonic() + drain_s
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(drain_s + 10)
        else:
            self._abort_all()

    def run_until_idle(self) -> None:
        """Step until nothing is running or waiting (for callers without the background thread)."""
        while self.has_work():
            self.step()

    def generate(
        self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]
    ) -> list[Request]:
        """Submit ``prompts`` together and run them to completion on this thread."""
        many = params if isinstance(params, list) else [params] * len(prompts)
        requests = [self.submit(p, sp) for p, sp in zip(prompts, many, strict=True)]
        self.run_until_idle()
        return requests

    def gauges(self) -> dict[str, int]:
        usage = self.cache.usage()
        return {
            "running": len(self.running),
            "waiting": len(self.waiting),
            "kvBlocksUsed": usage["blocksUsed"],
            "kvBlocksFree": usage["blocksFree"],
            "kvBlocksTotal": usage["blocksTotal"],
        }

    def stats(self) -> dict:
        return self.metrics.snapshot(self.gauges(), self.prefix.stats())

    def prometheus(self) -> str:
        return self.metrics.prometheus(self.gauges(), self.prefix.stats())

    def cached_hashes(self, limit: int = MAX_LISTED_HASHES) -> list[int]:
        """Hashes of the resident cached blocks, most recently used first (thread-safe)."""
        return self.prefix.hashes(limit)
