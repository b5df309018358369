"""Serving metrics, kept in-process and rendered as Prometheus text (``/metrics``) or JSON (``/stats``).

Thread-safe: the engine thread records, HTTP threads read. Histograms use fixed buckets
for Prometheus and a bounded window of recent values for the p50/p99 in ``/stats``.

Finished requests are also counted by (input length, output length) bucket, on the edges
the sizing schedulers slice a workload by, so the control plane can add up a Deployment's
replicas into the length histogram it measures from live traffic
(``controlplane/observed_traffic.py``).

The prefix cache's numbers (``prefix_cache.PrefixCache.stats``) come in as one more
argument and appear as ``prefixCache`` in ``/stats`` -- one level down, so the agent's
telemetry flattening turns them into ``prefixCache.hitTokens`` and so on -- and as
``flotilla_serve_prefix_cache_*`` series in ``/metrics``.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from plugins.sim.workload import DEFAULT_BUCKETS, Buckets

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# prefixCache key -> (Prometheus name after flotilla_serve_prefix_cache_, type, help)
PREFIX_CACHE_SERIES = {
    "hits": ("hits_total", "counter", "Requests that reused at least one cached prefix block."),
    "misses": ("misses_total", "counter", "Requests that looked the prefix cache up and reused nothing."),
    "hitTokens": ("hit_tokens_total", "counter", "Prompt tokens whose k/v came from the prefix cache."),
    "promptTokens": ("prompt_tokens_total", "counter", "Prompt tokens of requests that looked it up."),
    "evictions": ("evictions_total", "counter", "Cached blocks the cache plugin evicted."),
    "pinsBroken": ("pins_broken_total", "counter", "Session-pinned blocks evicted before their pin ended."),
    "cachedBlocks": ("cached_blocks", "gauge", "Hashed blocks resident, referenced or not."),
    "pinnedBlocks": ("pinned_blocks", "gauge", "Cached blocks pinned for a session now."),
}


# The grid requests are counted on: the simulator's default buckets (plugins.sim is pure
# standard library, so the runtime can import it), which the control plane reads back.
LENGTH_BUCKETS: Buckets = DEFAULT_BUCKETS
# Only requests that ran to their natural end count: a cancelled, aborted or failed
# request's output length says when it was cut off, not what the traffic asks for.
LENGTH_COUNTED_REASONS = frozenset({"stop", "length"})


def length_key(input_bucket: int, output_bucket: int) -> str:
    """``lengthCounts`` key of a bucket: ``"<input index>_<output index>"`` (telemetry-safe)."""
    return f"{input_bucket}_{output_bucket}"


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile ``q`` (0..100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


class Histogram:
    """Cumulative-bucket histogram plus the last ``window`` observations."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS, window: int = 2048):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.count = 0
        self.sum = 0.0
        self.recent: deque[float] = deque(maxlen=window)

    def observe(self, value: float) -> None:
        self.count += 1
        self.sum += value
        self.recent.append(value)
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1

    def summary(self) -> dict[str, float | int | None]:
        values = list(self.recent)
        return {
            "count": self.count,
            "sum": self.sum,
            "p50": percentile(values, 50),
            "p99": percentile(values, 99),
        }

    def prometheus(self, name: str, help_text: str) -> list[str]:
        lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        for bound, count in zip(self.buckets, self.counts, strict=True):
            lines.append(f'{name}_bucket{{le="{bound}"}} {count}')
        lines += [
            f'{name}_bucket{{le="+Inf"}} {self.count}',
            f"{name}_sum {self.sum}",
            f"{name}_count {self.count}",
        ]
        return lines


class ServingMetrics:
    """Request counts by finish reason, TTFT/TPOT histograms, token totals and a tokens/s rate."""

    def __init__(self, rate_window_s: float = 10.0):
        self._lock = threading.Lock()
        self.requests: dict[str, int] = {}
        self.ttft = Histogram()
        self.tpot = Histogram()
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.rate_window_s = rate_window_s
        self._token_times: deque[tuple[float, int]] = deque()
        self.started = time.monotonic()
        self.length_counts = [0] * LENGTH_BUCKETS.size  # row-major, as Buckets.index

    def record_tokens(self, count: int, now: float | None = None) -> None:
        """``count`` tokens were generated in one engine step."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self.generated_tokens += count
            self._token_times.append((now, count))
            self._trim(now)

    def record_finish(
        self,
        reason: str,
        prompt_tokens: int,
        ttft: float | None,
        tpot: float | None,
        output_tokens: int = 0,
    ) -> None:
        with self._lock:
            self.requests[reason] = self.requests.get(reason, 0) + 1
            self.prompt_tokens += prompt_tokens
            if reason in LENGTH_COUNTED_REASONS:
                self.length_counts[LENGTH_BUCKETS.index(prompt_tokens, output_tokens)] += 1
            if ttft is not None:
                self.ttft.observe(ttft)
            if tpot is not None:
                self.tpot.observe(tpot)

    def _trim(self, now: float) -> None:
        while self._token_times and self._token_times[0][0] < now - self.rate_window_s:
            self._token_times.popleft()

    def tokens_per_second(self) -> float:
        """Generated tokens per second over the last ``rate_window_s`` (or since start if sooner)."""
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            total = sum(count for _, count in self._token_times)
        span = min(self.rate_window_s, max(now - self.started, 1e-9))
        return total / span

    def _length_counts(self) -> dict[str, int]:
        columns = len(LENGTH_BUCKETS.output_edges)
        return {length_key(*divmod(b, columns)): n for b, n in enumerate(self.length_counts)}

    def snapshot(self, gauges: dict[str, int], prefix_cache: dict[str, int | str] | None = None) -> dict:
        """Everything as JSON-ready data; ``gauges`` are the engine's live numbers and
        ``prefix_cache`` its prefix cache's (``prefixCache``, when given).

        ``uptimeSeconds`` lets a reader of two snapshots tell a restarted process (whose
        counters began again at zero) from a missed reading.
        """
        rate = self.tokens_per_second()
        with self._lock:
            return {
                "requests": dict(self.requests),
                "requestsTotal": sum(self.requests.values()),
                "promptTokensTotal": self.prompt_tokens,
                "generatedTokensTotal": self.generated_tokens,
                "tokensPerSecond": rate,
                "ttftSeconds": self.ttft.summary(),
                "tpotSeconds": self.tpot.summary(),
                "lengthCounts": self._length_counts(),
                "uptimeSeconds": time.monotonic() - self.started,
                **({"prefixCache": dict(prefix_cache)} if prefix_cache is not None else {}),
                **gauges,
            }

    def prometheus(self, gauges: dict[str, int], prefix_cache: dict[str, int | str] | None = None) -> str:
        """Prometheus text exposition (format 0.0.4)."""
        rate = self.tokens_per_second()
        with self._lock:
            lines = [
                "# HELP flotilla_serve_requests_total Finished requests by finish reason.",
                "# TYPE flotilla_serve_requests_total counter",
            ]
            for reason, count in sorted(self.requests.items()):
                lines.append(f'flotilla_serve_requests_total{{finish_reason="{reason}"}} {count}')
            lines += [
                "# HELP flotilla_serve_prompt_tokens_total Prompt tokens of finished requests.",
                "# TYPE flotilla_serve_prompt_tokens_total counter",
                f"flotilla_serve_prompt_tokens_total {self.prompt_tokens}",
                "# HELP flotilla_serve_generated_tokens_total Tokens generated.",
                "# TYPE flotilla_serve_generated_tokens_total counter",
                f"flotilla_serve_generated_tokens_total {self.generated_tokens}",
                "# HELP flotilla_serve_tokens_per_second Generated tokens per second, recent window.",
                "# TYPE flotilla_serve_tokens_per_second gauge",
                f"flotilla_serve_tokens_per_second {rate}",
            ]
            lines += self._length_prometheus()
            lines += self.ttft.prometheus("flotilla_serve_ttft_seconds", "Time to first token.")
            lines += self.tpot.prometheus(
                "flotilla_serve_tpot_seconds", "Time per output token after the first."
            )
        gauge_help = {
            "running": "Requests in the running batch.",
            "waiting": "Requests waiting for admission.",
            "kvBlocksUsed": "KV cache blocks in use.",
            "kvBlocksFree": "KV cache blocks free.",
            "kvBlocksTotal": "KV cache blocks in all.",
        }
        for key, help_text in gauge_help.items():
            name = "flotilla_serve_" + "".join("_" + c.lower() if c.isupper() else c for c in key)
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {gauges.get(key, 0)}"]
        if prefix_cache is not None:
            for key, (suffix, kind, help_text) in PREFIX_CACHE_SERIES.items():
                name = f"flotilla_serve_prefix_cache_{suffix}"
                value = prefix_cache[key]
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
        return "\n".join(lines) + "\n"

    def _length_prometheus(self) -> list[str]:
        """Counts by length bucket, labelled with each bucket's upper edges (``+Inf`` for the last)."""
        name = "flotilla_serve_request_lengths_total"
        lines = [
            f"# HELP {name} Requests that finished (stop or length) by prompt and output length bucket.",
            f"# TYPE {name} counter",
        ]

        def edge(edges: list[int], k: int) -> str:
            return "+Inf" if k == len(edges) - 1 else str(edges[k])

        columns = len(LENGTH_BUCKETS.output_edges)
        for b, count in enumerate(self.length_counts):
            i, j = divmod(b, columns)
            labels = (
                f'input_le="{edge(LENGTH_BUCKETS.input_edges, i)}",'
                f'output_le="{edge(LENGTH_BUCKETS.output_edges, j)}"'
            )
            lines.append(f"{name}{{{labels}}} {count}")
        return lines
