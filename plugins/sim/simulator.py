"""Discrete-event simulation of continuous-batching serving, step for step like the torch engine.

Each simulated instance runs the loop of ``agents/runtimes/serve/engine.py`` (``Engine.step``)
with a :class:`~plugins.sim.profiles.GpuProfile` in place of the forward passes, so a
simulated trace and a replay on the real engine make the same scheduling decisions and only
the step *times* come from the model. The engine behaviours it reproduces:

- **Steps run back to back while there is work**; an idle engine starts a step the moment a
  request arrives. A request that arrives during a step waits for the next one.
- **One step = decode, then prefill.** First every running request reserves KV blocks for
  one more token (``_reserve_decode``), then waiting requests are admitted (``_admit``);
  then the decode group runs one forward and the admitted group a second, padded forward.
  The step costs ``decode_ms + prefill_ms`` and the two groups' tokens are stamped when
  their own forward ends (so an admitted request's first token lands after the decode).
- **Admission is FIFO from the head of the queue** and stops at the first request that does
  not fit: while the batch has fewer than ``max_batch`` requests, while the padded prefill
  (``longest prompt x rows``) stays within ``max_prefill_tokens`` (4096, the engine's
  default; the first request is always allowed), and while ``ceil((seq + 1) / block_size)``
  blocks are free -- of which ``ceil(seq / block_size)`` are taken.
- **Paged KV cache**: ``kv_capacity_tokens // block_size`` whole blocks; a running request
  grows by a block when its next token crosses a block boundary; blocks return on finish.
- **Recompute preemption**: when a running request cannot get its next block, the most
  recently admitted running request (the tail of the batch, possibly the request itself) is
  preempted -- blocks freed, pushed to the *front* of the queue -- until it fits. A
  preempted request is later re-prefilled over its prompt plus the tokens it had generated,
  and that prefill samples its next token; its TTFT keeps the first first-token time.
- **Rejection at submit**: a request whose ``input + output + 1`` tokens need more blocks
  than the whole cache is rejected (counted as an SLO miss, never queued).
- **Padded batches**: the engine gathers each group into dense ``[rows, longest]`` tensors.
  A decode step reads ``rows x longest context`` KV entries, which is what the simulator
  passes as ``context_tokens`` (``attention="padded"``, the default); ``attention="paged"``
  charges the sum of the contexts instead, as a paged-attention kernel (vLLM) would. A
  prefill of ``rows`` prompts padded to ``width`` costs :meth:`GpuProfile.prefill_batch_ms`.

- **Prefix caching** (with ``cache=``, see :mod:`plugins.sim.prefix`): a request that
  names its blocks (``Request.block_hashes``) references the leading run of them an
  instance holds when it is admitted (never its last prompt token's block), needs blocks
  only for the rest, and prefills only the uncached tokens (``rows x uncached`` tokens,
  attending over the whole prompt). Its full prompt blocks are cached once its prefill
  ends, for the requests admitted after it; the blocks its output filled, when it names
  them, once it finishes. Cached blocks nobody holds count as free and are evicted only
  when an allocation needs their space. The dispatcher may be a function of the request
  and the instances' state (their load and the names they hold): a prefix-aware router.

Not modelled: EOS (every request generates exactly ``output_tokens``), ``maxSeqLen``
truncation, cancellation, and the HTTP server in front of the engine.

Speed: quiet stretches -- only decoding, nothing to admit, no preemption due -- are jumped in
one go to the next finish, block shortage or arrival, with the step times summed in closed
form (each step's context grows by the batch size, so the sum is a quadratic), which is
exactly what stepping would give. Instances are advanced lazily from a heap of their
next-step times, only up to each arrival.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Literal

from plugins.sim.prefix import BlockCache, PrefixCache, merge_stats
from plugins.sim.profiles import GpuProfile
from plugins.sim.workload import Request


@dataclass(frozen=True)
class InstanceView:
    """What a dispatch function sees of one instance when a request arrives."""

    index: int
    load: int  # requests dispatched here and not finished
    running: int
    waiting: int
    free_blocks: int
    cached: Collection[int]  # the block names it holds (empty without a prefix cache)


Dispatcher = Callable[[Request, list[InstanceView]], int]
Dispatch = Literal["round_robin", "least_loaded"] | Dispatcher
Attention = Literal["padded", "paged"]
DEFAULT_MAX_PREFILL_TOKENS = 4096  # Engine(max_prefill_tokens=4096)
METRICS = ("ttft", "tpot", "e2e")

_WAITING, _RUNNING, _DONE = 0, 1, 2


@dataclass
class RequestResult:
    """How one request fared, in seconds. A rejected request has infinite latencies."""

    id: int
    arrival_s: float
    ttft_s: float
    tpot_s: float  # mean time per output token after the first; 0 for one output token
    e2e_s: float
    preemptions: int
    rejected: bool
    cached_tokens: int = 0  # prompt tokens its first prefill found in the prefix cache


class _Number(float):
    """A float that also answers a call, so ``result.throughput_rps`` and ``result.throughput_rps()``
    both give the number (callers were written against either reading of the interface)."""

    def __call__(self) -> float:
        return float(self)


@dataclass
class SimResult:
    """Per-request outcomes of one simulation and the GPUs it used."""

    requests: list[RequestResult]
    duration_s: float
    gpus: int
    # The instances' prefix-cache figures summed (plugins.sim.prefix.merge_stats); None without one.
    prefix_cache: dict[str, float] | None = None

    def percentile(self, metric: str, q: float) -> float:
        """The ``q``-th percentile (0..100, linear interpolation) of ``metric`` in seconds.

        Over *all* requests: rejected ones count as infinitely slow, consistent with
        :meth:`attainment`. 0.0 when there are no requests.
        """
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
        if not 0 <= q <= 100:
            raise ValueError(f"percentile q must be within 0..100, got {q}")
        values = sorted(getattr(r, f"{metric}_s") for r in self.requests)
        if not values:
            return 0.0
        position = q / 100 * (len(values) - 1)
        lo = int(position)
        hi = min(lo + 1, len(values) - 1)
        frac = position - lo
        if frac == 0 or values[lo] == values[hi]:
            return values[lo]
        return values[lo] + (values[hi] - values[lo]) * frac

    def attainment(self, ttft_ms: float | None, tpot_ms: float | None) -> float:
        """The share of ALL requests meeting both targets (rejected ones miss; None always passes)."""
        if not self.requests:
            return 1.0
        ttft = math.inf if ttft_ms is None else ttft_ms / 1e3
        tpot = math.inf if tpot_ms is None else tpot_ms / 1e3
        met = sum(1 for r in self.requests if not r.rejected and r.ttft_s <= ttft and r.tpot_s <= tpot)
        return met / len(self.requests)

    @property
    def completed(self) -> int:
        return sum(1 for r in self.requests if not r.rejected)

    @property
    def throughput_rps(self) -> float:
        """Completed requests per second of simulated time."""
        return _Number(self.completed / self.duration_s if self.duration_s > 0 else 0.0)

    def summary(self) -> dict[str, Any]:
        """Counts and p50/p90/p99 latencies in ms (None where a percentile falls on a rejection)."""

        def ms(metric: str, q: float) -> float | None:
            value = self.percentile(metric, q)
            return value * 1e3 if math.isfinite(value) else None

        return {
            "requests": len(self.requests),
            "completed": self.completed,
            "rejected": len(self.requests) - self.completed,
            "preemptions": sum(r.preemptions for r in self.requests),
            "durationS": self.duration_s,
            "throughputRps": float(self.throughput_rps),
            "gpus": self.gpus,
            **{f"{metric}Ms": {f"p{q}": ms(metric, q) for q in (50, 90, 99)} for metric in METRICS},
        }


class _Seq:
    """A request's mutable state inside the simulation (slots: millions of attribute hits)."""

    __slots__ = (
        "id", "arrival", "inp", "out", "gen", "seq", "blocks", "preemptions",
        "first", "finish", "kv_ready", "state", "rejected",
        "request", "hashes", "session", "shared", "hit", "cached_tokens",
    )  # fmt: skip

    def __init__(self, request: Request):
        self.id = request.id
        self.arrival = request.arrival_s
        self.inp = request.input_tokens
        self.out = request.output_tokens
        if self.inp < 1 or self.out < 1:
            raise ValueError(f"request {request.id} needs at least one input and one output token")
        self.gen = 0  # tokens generated so far
        self.seq = self.inp  # the engine's seq_len: prompt + generated
        self.blocks = 0
        self.preemptions = 0
        self.first: float | None = None
        self.finish = math.inf
        self.kv_ready = False  # arrived with its KV cache (disaggregated decode)
        self.state = _WAITING
        self.rejected = False
        self.request = request
        self.hashes = request.block_hashes
        self.session = request.session
        self.shared: list[int] = []  # cached block names it holds (its blocks beyond are its own)
        self.hit = 0  # tokens of the current admission's prefill found in the cache
        self.cached_tokens = 0

    def result(self) -> RequestResult:
        if self.rejected or self.first is None:
            return RequestResult(self.id, self.arrival, math.inf, math.inf, math.inf, self.preemptions, True)
        tpot = (self.finish - self.first) / (self.out - 1) if self.out > 1 else 0.0
        return RequestResult(
            self.id, self.arrival, self.first - self.arrival, tpot, self.finish - self.arrival,
            self.preemptions, False, self.cached_tokens,
        )  # fmt: skip


class _Instance:
    """One engine: its queue, its batch, its block pool and its clock."""

    def __init__(
        self, profile: GpuProfile, attention: Attention, max_prefill_tokens: int, role: str = "serve",
        transfer_s_per_token: float = 0.0, cache: PrefixCache | None = None,
    ):  # fmt: skip
        self.bs = profile.block_size
        self.total_blocks = profile.kv_blocks
        self.free = self.total_blocks  # blocks no running request holds (idle cached ones included)
        self.cache = BlockCache(cache, self.total_blocks) if cache is not None else None
        self.max_batch = profile.max_batch
        self.max_prefill = max_prefill_tokens
        self.padded = attention == "padded"
        self.d_base = profile.decode_base_ms / 1e3
        self.d_seq = profile.decode_ms_per_seq / 1e3
        self.d_ctx = profile.decode_ms_per_context_token / 1e3
        self.p_base = profile.prefill_base_ms / 1e3
        self.p_tok = profile.prefill_ms_per_token / 1e3
        self.p_sq = profile.prefill_ms_per_token_sq / 1e3
        self.role = role  # serve | prefill (hands requests off after their prefill)
        self.transfer = transfer_s_per_token
        self.waiting: deque[_Seq] = deque()
        self.running: list[_Seq] = []
        self.handoffs: list[tuple[float, int, _Seq]] = []
        self.t = 0.0  # when the next step starts
        self.busy = False
        self.outstanding = 0
        self.last_end = -math.inf  # the latest step's end and how many requests it completed,
        self.last_done = 0  # which count as outstanding until then
        # Step-time multipliers an outside model sets as it goes (a power cap slowing the
        # GPUs: plugins.sim.power_bench); 1.0 leaves every step time exactly as profiled.
        self.prefill_scale = 1.0
        self.decode_scale = 1.0
        # Seconds spent in each phase so far, and decode seconds times rows (for the
        # power model, which draws more with a larger decode batch).
        self.prefill_s = 0.0
        self.decode_s = 0.0
        self.decode_rows_s = 0.0

    def load(self, now: float) -> int:
        """Requests dispatched here and not yet finished (or handed off) at ``now``."""
        return self.outstanding + (self.last_done if self.last_end > now else 0)

    def view(self, index: int, now: float) -> InstanceView:
        cached = self.cache if self.cache is not None else ()
        return InstanceView(index, self.load(now), len(self.running), len(self.waiting), self.free, cached)

    def enqueue(self, s: _Seq, now: float) -> None:
        if self.cache is not None and s.session is not None:
            self.cache.arrive(s.session, now)
        self.waiting.append(s)
        self.outstanding += 1
        if not self.busy:
            self.busy = True
            self.t = max(self.t, now)

    def advance(self, horizon: float) -> None:
        """Run every step that starts before ``horizon`` (arrivals at ``horizon`` are not in yet)."""
        while self.busy and self.t < horizon:
            if not self.running and not self.waiting:
                self.busy = False
                return
            if not self._jump(horizon):
                self._step()

    # -- one step, exactly as Engine.step ----------------------------------------------------

    def _step(self) -> None:
        bs, running, waiting, cache = self.bs, self.running, self.waiting, self.cache
        ready: list[_Seq] = []
        for s in list(running):  # _reserve_decode
            if s.state != _RUNNING:  # preempted by an older request this step
                continue
            need = -(-s.seq // bs) - s.blocks - len(s.shared)
            while need > self.free:
                victim = running.pop()
                self._release(victim, self.t, turn_end=False)
                victim.preemptions += 1
                victim.state = _WAITING
                waiting.appendleft(victim)
                if victim is s:
                    break
            else:
                self._take(need)
                s.blocks += need
                ready.append(s)
        admitted: list[_Seq] = []  # _admit
        joined = False
        longest = 0
        while waiting and len(running) < self.max_batch:
            s = waiting[0]
            if not s.kv_ready:
                longest = max(longest, s.seq)
                if admitted and longest * (len(admitted) + 1) > self.max_prefill:
                    break
            matched = cache.match(s.hashes, (s.seq - 1) // bs) if cache is not None and s.hashes else []
            held = cache.held(matched) if matched else 0  # shared with a running request: no cost
            if -(-(s.seq + 1) // bs) - s.blocks - held > self.free:
                break
            if matched:
                self.free -= cache.acquire(matched)
                s.shared = matched
            s.hit = len(matched) * bs
            need = -(-s.seq // bs) - s.blocks - len(s.shared)
            self._take(need)
            s.blocks += need
            waiting.popleft()
            running.append(s)
            s.state = _RUNNING
            if s.kv_ready:  # its KV arrived from a prefill instance: it decodes from the next step
                s.kv_ready = False
                joined = True
            else:
                admitted.append(s)
        t = self.t
        done = 0
        if ready:
            rows = len(ready)
            if self.padded:
                context = rows * max(s.seq for s in ready)
            else:
                context = sum(s.seq for s in ready)
            step = (self.d_base + self.d_seq * rows + self.d_ctx * context) * self.decode_scale
            t += step
            self.decode_s += step
            self.decode_rows_s += step * rows
            for s in ready:
                s.gen += 1
                s.seq += 1
                if s.gen >= s.out:
                    self._finish(s, t)
                    done += 1
        if admitted:
            rows, width = len(admitted), max(s.seq - s.hit for s in admitted)
            length = max(s.seq for s in admitted)  # every row attends over its whole prompt
            step = (
                self.p_base + self.p_tok * rows * width + self.p_sq * rows * width * length
            ) * self.prefill_scale
            t += step
            self.prefill_s += step
            for s in admitted:
                if cache is not None and s.hashes:
                    if s.first is None:
                        s.cached_tokens = s.hit
                        cache.count_lookup(s.hit, s.inp)
                    self._cache_blocks(s, cache, s.seq // bs)
                s.gen += 1
                s.seq += 1
                if s.first is None:
                    s.first = t
                if s.gen >= s.out:
                    self._finish(s, t)
                    done += 1
                elif self.role == "prefill":
                    self._hand_off(s, t)
                    done += 1
        if done:
            self.running = [s for s in self.running if s.state == _RUNNING]
        elif not (ready or admitted or joined or running):  # unreachable after admission control
            stuck = waiting.popleft()
            stuck.rejected = True
            stuck.state = _DONE
            self.outstanding -= 1
        self.t = t
        self.last_end, self.last_done = t, done

    def _finish(self, s: _Seq, t: float) -> None:
        s.finish = t
        s.state = _DONE
        if self.cache is not None and len(s.hashes) > len(s.shared):
            self._cache_blocks(s, self.cache, (s.seq - 1) // self.bs)  # its last token was never written
        self._release(s, t, turn_end=True)
        self.outstanding -= 1

    # -- blocks, with or without a prefix cache ------------------------------------------

    def _take(self, count: int) -> None:
        """``count`` blocks for a running request, evicting idle cached ones when no other is free."""
        self.free -= count
        if self.cache is not None and self.cache.idle > self.free:
            self.cache.evict(self.cache.idle - self.free, self.t)

    def _release(self, s: _Seq, t: float, turn_end: bool) -> None:
        """Give back ``s``'s blocks: its own ones are free again, its cached ones idle (a finished
        turn of a session may pin them)."""
        self.free += s.blocks
        s.blocks = 0
        cache = self.cache
        if cache is None:
            return
        if s.shared:
            session = s.session if turn_end else None
            self.free += cache.release(s.shared, t, session, self.total_blocks - self.free)
            s.shared = []
        if turn_end:
            if s.session is not None:
                cache.turn_ended(s.session, t)
            cache.trim(t)

    def _cache_blocks(self, s: _Seq, cache: BlockCache, full: int) -> None:
        """``s`` has written its first ``full`` blocks (after its prefill: the prompt's; when it
        finishes: its output's too): name them in the cache, where they stop being its own.

        The engine does this as each block fills; only the request's own next turn could use
        an output block, and that comes after it finishes, so naming them then is the same."""
        for name in s.hashes[len(s.shared) : full]:
            if cache.register(name):
                s.blocks -= 1
                s.shared.append(name)

    def _hand_off(self, s: _Seq, t: float) -> None:
        """Prefill role: the request leaves with its KV cache, to arrive at a decode instance later."""
        self._finish(s, t)
        s.finish = math.inf
        s.state = _WAITING
        s.kv_ready = True
        self.handoffs.append((t + self.transfer * s.inp, s.id, s))

    # -- many quiet decode steps at once ----------------------------------------------------

    def _jump(self, horizon: float) -> bool:
        """Run decode-only steps in closed form while nothing but decoding can happen.

        Valid while every running request gets its block (no preemption), the queue's head
        cannot be admitted (blocks only get scarcer and the batch stays the same size until
        someone finishes), and no new request can arrive (steps start before ``horizon``).
        Returns False, having done nothing, when this step needs the full treatment.
        """
        running = self.running
        if not running:
            return False
        bs, total, cache = self.bs, self.total_blocks, self.cache
        shared = len(cache.refs) if cache is not None else 0  # cached blocks running requests hold
        need = sum(-(-s.seq // bs) - len(s.shared) for s in running) + shared
        if need > total:
            return False
        batch = len(running)
        waiting = self.waiting
        if waiting and batch < self.max_batch:
            head = waiting[0]
            held = 0
            if cache is not None and head.hashes:
                held = cache.held(cache.match(head.hashes, (head.seq - 1) // bs))
            if -(-(head.seq + 1) // bs) - held <= total - need:
                return False
        steps = min(s.out - s.gen for s in running)  # the last of them finishes someone
        context = batch * max(s.seq for s in running) if self.padded else sum(s.seq for s in running)
        scale = self.decode_scale
        first = (self.d_base + self.d_seq * batch + self.d_ctx * context) * scale
        grow = self.d_ctx * batch * scale  # every step each row's context grows by one

        def start(i: int) -> float:  # when the i-th step from now starts
            return self.t + i * first + grow * i * (i - 1) / 2

        if horizon < math.inf and steps > 1 and start(steps - 1) >= horizon:
            steps = min(steps, self._steps_before(horizon, first, grow, start))
        if sum(-(-(s.seq + steps - 1) // bs) - len(s.shared) for s in running) + shared > total:
            lo, hi = 1, steps - 1  # the largest run whose last reservation still fits
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if sum(-(-(s.seq + mid - 1) // bs) - len(s.shared) for s in running) + shared <= total:
                    lo = mid
                else:
                    hi = mid - 1
            steps = lo
        end = start(steps)
        self.decode_s += end - self.t
        self.decode_rows_s += (end - self.t) * batch
        used = 0
        done = 0
        for s in running:
            s.gen += steps
            s.seq += steps
            s.blocks = -(-(s.seq - 1) // bs) - len(s.shared)
            used += s.blocks
            if s.gen >= s.out:
                done += 1
        self.free = total - used - shared
        if cache is not None and cache.idle > self.free:
            cache.evict(cache.idle - self.free, end)
        if done:
            for s in running:
                if s.gen >= s.out:
                    self._finish(s, end)
            self.running = [s for s in running if s.state == _RUNNING]
        self.t = end
        self.last_end, self.last_done = end, done
        return True

    def _steps_before(self, horizon: float, first: float, grow: float, start: Callable[[int], float]) -> int:
        """How many steps start before ``horizon`` (at least one: the current one does)."""
        room = horizon - self.t
        if grow > 0:
            b = first - grow / 2
            guess = (-b + math.sqrt(b * b + 2 * grow * room)) / grow
        elif first > 0:
            guess = room / first
        else:
            return 1 << 62
        n = max(1, math.ceil(guess))
        while n > 1 and start(n - 1) >= horizon:
            n -= 1
        while start(n) < horizon:
            n += 1
        return n


def _fits(blocks: int, block_size: int, tokens: int) -> bool:
    """Engine.submit's test: ``tokens`` plus one must fit the whole cache."""
    return -(-(tokens + 1) // block_size) <= blocks


class _Feeder:
    """Feeds time-sorted arrivals to a pool, resumably: :meth:`run_until` may be called with
    growing horizons (an outside clock), and ``run_until(math.inf)`` runs everything out."""

    def __init__(self, arrivals: list[tuple[float, int, _Seq]], pool: list[_Instance], dispatch: Dispatch):
        self.arrivals, self.pool, self.dispatch = arrivals, pool, dispatch
        self.next = 0  # the first arrival not yet dispatched
        self.heap: list[tuple[float, int]] = []  # (next step start, instance) for busy instances
        self.turn = 0

    def run_until(self, horizon: float) -> None:
        """Dispatch the arrivals before ``horizon`` and run every step that starts before it."""
        arrivals, pool, heap, dispatch = self.arrivals, self.pool, self.heap, self.dispatch
        while self.next < len(arrivals) and arrivals[self.next][0] < horizon:
            now, _, s = arrivals[self.next]
            self.next += 1
            while heap and heap[0][0] < now:
                _, i = heapq.heappop(heap)
                instance = pool[i]
                instance.advance(now)
                if instance.busy:
                    heapq.heappush(heap, (instance.t, i))
            if dispatch == "round_robin":
                index = self.turn % len(pool)
                self.turn += 1
            elif dispatch == "least_loaded":
                index = min(range(len(pool)), key=lambda i: pool[i].load(now))
            else:
                index = dispatch(s.request, [instance.view(i, now) for i, instance in enumerate(pool)])
                if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(pool):
                    raise ValueError(
                        f"dispatch returned {index!r}; it must be an instance index 0..{len(pool) - 1}"
                    )
            instance = pool[index]
            was_busy = instance.busy
            instance.enqueue(s, now)
            if not was_busy:
                heapq.heappush(heap, (instance.t, index))
        if horizon == math.inf:
            for _, i in heap:
                pool[i].advance(math.inf)
            heap.clear()
            return
        while heap and heap[0][0] < horizon:
            _, i = heapq.heappop(heap)
            instance = pool[i]
            instance.advance(horizon)
            if instance.busy:
                heapq.heappush(heap, (instance.t, i))


def _run_pool(arrivals: list[tuple[float, int, _Seq]], pool: list[_Instance], dispatch: Dispatch) -> None:
    """Feed ``arrivals`` (time-sorted) to ``pool`` and run every instance until it is idle."""
    _Feeder(arrivals, pool, dispatch).run_until(math.inf)


def _check_pool(name: str, count: int) -> None:
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"{name} must be a positive integer, got {count!r}")


def _result(seqs: list[_Seq], gpus: int, pool: list[_Instance] | None = None) -> SimResult:
    results = [s.result() for s in seqs]
    caches = [instance.cache.stats() for instance in pool or [] if instance.cache is not None]
    prefix = merge_stats(caches) if caches else None
    if not seqs:
        return SimResult(results, 0.0, gpus, prefix)
    start = min(s.arrival for s in seqs)
    end = max(max(s.arrival for s in seqs), max((s.finish for s in seqs if not s.rejected), default=start))
    return SimResult(results, end - start, gpus, prefix)


class LivePool:
    """``instances`` engines of ``profile`` serving ``requests``, advanced by an outside clock.

    For simulations whose engines change speed while they run -- a power cap slowing the
    GPUs (``plugins.sim.power_bench``): call :meth:`run_until` with growing horizons, set an
    engine's ``prefill_scale`` / ``decode_scale`` between calls (its step times are
    multiplied by them from its next step), read the seconds it spent in each phase with
    :meth:`phase_seconds`, and take :meth:`result` at the end. A step that starts before a
    horizon runs to its end, so an engine may be up to one step past it (:meth:`clock`).
    With every scale left at 1.0 the result is exactly :func:`simulate`'s.
    """

    def __init__(
        self,
        requests: list[Request],
        profile: GpuProfile,
        instances: int = 1,
        dispatch: Dispatch = "least_loaded",
        *,
        attention: Attention = "padded",
        max_prefill_tokens: int = DEFAULT_MAX_PREFILL_TOKENS,
        cache: PrefixCache | None = None,
    ):
        _check_pool("instances", instances)
        if dispatch not in ("round_robin", "least_loaded") and not callable(dispatch):
            raise ValueError(
                f"dispatch must be 'round_robin', 'least_loaded' or a function, got {dispatch!r}"
            )
        self.profile = profile
        self.seqs = [_Seq(r) for r in requests]
        self.pool = [_Instance(profile, attention, max_prefill_tokens, cache=cache) for _ in range(instances)]
        arrivals = []
        for s in self.seqs:
            if _fits(profile.kv_blocks, profile.block_size, s.inp + s.out):
                arrivals.append((s.arrival, s.id, s))
            else:
                s.rejected = True
        arrivals.sort(key=lambda a: a[0])
        self._feeder = _Feeder(arrivals, self.pool, dispatch)

    def run_until(self, horizon: float) -> None:
        """Dispatch the requests arriving before ``horizon`` and run the steps starting before it."""
        self._feeder.run_until(horizon)

    def set_scales(self, index: int, prefill: float, decode: float) -> None:
        """Multiply engine ``index``'s prefill and decode step times by these from its next step."""
        if not (prefill > 0 and decode > 0 and math.isfinite(prefill) and math.isfinite(decode)):
            raise ValueError(f"step-time scales must be positive numbers, got {prefill!r}, {decode!r}")
        instance = self.pool[index]
        instance.prefill_scale, instance.decode_scale = prefill, decode

    def phase_seconds(self, index: int) -> tuple[float, float, float]:
        """Engine ``index``'s seconds of prefill, of decode, and of decode times its rows, so far."""
        instance = self.pool[index]
        return instance.prefill_s, instance.decode_s, instance.decode_rows_s

    def clock(self, index: int) -> float:
        """When engine ``index``'s last step ended (its next one starts no earlier)."""
        return self.pool[index].t

    def result(self) -> SimResult:
        """Run everything out and return the per-request outcomes (in the order of ``requests``)."""
        self._feeder.run_until(math.inf)
        return _result(self.seqs, len(self.pool) * self.profile.gpus, self.pool)


def simulate(
    requests: list[Request],
    profile: GpuProfile,
    instances: int = 1,
    dispatch: Dispatch = "least_loaded",
    *,
    attention: Attention = "padded",
    max_prefill_tokens: int = DEFAULT_MAX_PREFILL_TOKENS,
    cache: PrefixCache | None = None,
) -> SimResult:
    """Serve ``requests`` on ``instances`` identical engines of ``profile``.

    ``dispatch``: ``round_robin`` deals requests out in turn; ``least_loaded`` sends each to
    the instance with the fewest unfinished requests at its arrival (lowest index on ties);
    a function of the request and every instance's :class:`InstanceView` returns the index
    itself. ``cache``: each instance keeps a prefix cache of the requests' named prompt
    blocks (None: nothing is reused). Results come back in the order of ``requests``.
    """
    pool = LivePool(
        requests, profile, instances, dispatch, attention=attention, max_prefill_tokens=max_prefill_tokens,
        cache=cache,
    )  # fmt: skip
    return pool.result()


def simulate_disaggregated(
    requests: list[Request],
    prefill: GpuProfile,
    decode: GpuProfile,
    prefill_instances: int,
    decode_instances: int,
    transfer_ms_per_token: float = 0.0,
    *,
    attention: Attention = "padded",
    max_prefill_tokens: int = DEFAULT_MAX_PREFILL_TOKENS,
) -> SimResult:
    """DistServe: prefill instances only prefill, decode instances only decode.

    A request is prefilled (batched as the engine batches prefills) on the least-loaded
    prefill instance, which samples its first token -- TTFT ends there. Its KV cache then
    travels for ``transfer_ms_per_token * input_tokens`` and it joins the queue of the
    least-loaded decode instance at that moment; it decodes from the step after it is
    admitted there. A decode instance that must preempt recomputes like the engine does
    (its own prefill). The prefill side never waits on the decode side, so the two pools are
    simulated one after the other.
    """
    _check_pool("prefill_instances", prefill_instances)
    _check_pool("decode_instances", decode_instances)
    if not transfer_ms_per_token >= 0:
        raise ValueError(f"transfer_ms_per_token must be >= 0, got {transfer_ms_per_token!r}")
    seqs = [_Seq(r) for r in requests]
    prefill_pool = [
        _Instance(prefill, attention, max_prefill_tokens, "prefill", transfer_ms_per_token / 1e3)
        for _ in range(prefill_instances)
    ]
    decode_pool = [_Instance(decode, attention, max_prefill_tokens) for _ in range(decode_instances)]
    arrivals = []
    for s in seqs:
        if _fits(prefill.kv_blocks, prefill.block_size, s.inp) and (
            s.out == 1 or _fits(decode.kv_blocks, decode.block_size, s.inp + s.out)
        ):
            arrivals.append((s.arrival, s.id, s))
        else:
            s.rejected = True
    arrivals.sort(key=lambda a: a[0])
    _run_pool(arrivals, prefill_pool, "least_loaded")
    handoffs = sorted((h for instance in prefill_pool for h in instance.handoffs), key=lambda h: (h[0], h[1]))
    _run_pool(handoffs, decode_pool, "least_loaded")
    gpus = prefill_instances * prefill.gpus + decode_instances * decode.gpus
    return _result(seqs, gpus)
