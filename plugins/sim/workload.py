"""Request traces for the simulator: synthetic arrivals, BurstGPT replays, and length buckets.

Every generator is seeded and draws arrival gaps and lengths from *separate* random streams,
with gaps drawn at unit rate and then divided by the rate. So the same seed at a different
rate gives the same requests, only closer together -- which is what a goodput search needs:
attainment then changes with load alone, not with a reshuffled sample.
"""

from __future__ import annotations

import bisect
import csv
import io
import math
import os
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, TextIO


@dataclass
class Request:
    """One request of a trace: when it arrives and how many tokens go in and come out.

    ``block_hashes`` name its prompt's full KV blocks (``plugins.prefix_hash``: equal names,
    equal tokens up to the block's end), for a simulation with a prefix cache; ``session``
    is the multi-turn conversation it is a turn of, for session pins. Both are optional.
    """

    id: int
    arrival_s: float
    input_tokens: int
    output_tokens: int
    block_hashes: tuple[int, ...] = ()
    session: str | None = None


@dataclass(frozen=True)
class LengthDist:
    """A distribution of token counts; build one with :meth:`fixed`, :meth:`uniform`, :meth:`lognormal`."""

    kind: Literal["fixed", "uniform", "lognormal"]
    lo: int
    hi: int
    mu: float = 0.0
    sigma: float = 0.0

    @classmethod
    def fixed(cls, n: int) -> LengthDist:
        _check_length("n", n)
        return cls("fixed", n, n)

    @classmethod
    def uniform(cls, lo: int, hi: int) -> LengthDist:
        """Integers ``lo..hi`` inclusive, equally likely."""
        _check_length("lo", lo)
        _check_length("hi", hi)
        if hi < lo:
            raise ValueError(f"uniform length needs lo <= hi, got {lo} > {hi}")
        return cls("uniform", lo, hi)

    @classmethod
    def lognormal(cls, mean: float, sigma: float, lo: int = 1, hi: int = 1 << 20) -> LengthDist:
        """Log-normal with the given *mean* in tokens (not the log-space mu), clamped to ``lo..hi``.

        Real prompt and answer lengths are right-skewed, which log-normal captures with one
        shape parameter; clamping (rather than redrawing) keeps one draw per sample.
        """
        _check_length("lo", lo)
        _check_length("hi", hi)
        if hi < lo:
            raise ValueError(f"lognormal length needs lo <= hi, got {lo} > {hi}")
        if not mean > 0 or not sigma >= 0 or not math.isfinite(mean) or not math.isfinite(sigma):
            raise ValueError(f"lognormal length needs mean > 0 and sigma >= 0, got {mean}, {sigma}")
        return cls("lognormal", lo, hi, math.log(mean) - sigma * sigma / 2, sigma)

    def sample(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            return self.lo
        if self.kind == "uniform":
            return rng.randint(self.lo, self.hi)
        return min(self.hi, max(self.lo, round(rng.lognormvariate(self.mu, self.sigma))))

    @property
    def mean(self) -> float:
        """The mean before clamping (what the distribution was built with)."""
        if self.kind == "lognormal":
            return math.exp(self.mu + self.sigma * self.sigma / 2)
        return (self.lo + self.hi) / 2


def _check_length(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"length {name} must be a positive integer, got {value!r}")


DEFAULT_INPUTS = LengthDist.fixed(512)
DEFAULT_OUTPUTS = LengthDist.fixed(128)


def _arrivals(
    gap: Callable[[random.Random], float],
    rate: float,
    duration_s: float | None,
    count: int | None,
    inputs: LengthDist,
    outputs: LengthDist,
    seed: int,
) -> list[Request]:
    """Requests whose unit-rate gaps come from ``gap``, scaled to ``rate``."""
    if not rate > 0 or not math.isfinite(rate):
        raise ValueError(f"rate must be a positive number of requests per second, got {rate!r}")
    if (duration_s is None) == (count is None):
        raise ValueError("give exactly one of duration_s and count")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
        raise ValueError(f"count must be a non-negative integer, got {count!r}")
    if duration_s is not None and not duration_s >= 0:
        raise ValueError(f"duration_s must be >= 0, got {duration_s!r}")
    times = random.Random(f"{seed}:arrivals")
    lengths = random.Random(f"{seed}:lengths")
    requests: list[Request] = []
    t = 0.0
    while count is None or len(requests) < count:
        t += gap(times) / rate
        if duration_s is not None and t >= duration_s:
            break
        requests.append(Request(len(requests), t, inputs.sample(lengths), outputs.sample(lengths)))
    return requests


def poisson(
    rate: float,
    duration_s: float | None = None,
    count: int | None = None,
    inputs: LengthDist = DEFAULT_INPUTS,
    outputs: LengthDist = DEFAULT_OUTPUTS,
    seed: int = 0,
) -> list[Request]:
    """Poisson arrivals at ``rate`` requests/s, for ``duration_s`` seconds or ``count`` requests."""
    return _arrivals(lambda rng: rng.expovariate(1.0), rate, duration_s, count, inputs, outputs, seed)


def gamma(
    rate: float,
    cv: float,
    duration_s: float | None = None,
    count: int | None = None,
    inputs: LengthDist = DEFAULT_INPUTS,
    outputs: LengthDist = DEFAULT_OUTPUTS,
    seed: int = 0,
) -> list[Request]:
    """Bursty arrivals: Gamma inter-arrival gaps with mean ``1/rate`` and coefficient of variation ``cv``.

    ``cv = 1`` is Poisson; larger values bunch requests into bursts with lulls between them,
    as production traces do (BurstGPT fits cv of 2-4 for conversation services).
    """
    if not cv > 0 or not math.isfinite(cv):
        raise ValueError(f"cv must be > 0, got {cv!r}")
    shape = 1.0 / (cv * cv)
    return _arrivals(
        lambda rng: rng.gammavariate(shape, 1.0 / shape), rate, duration_s, count, inputs, outputs, seed
    )


BURSTGPT_COLUMNS = ("Timestamp", "Model", "Request tokens", "Response tokens")


def load_burstgpt(
    path_or_file: str | os.PathLike[str] | TextIO,
    time_scale: float = 1.0,
    model: str | None = None,
    limit: int | None = None,
) -> list[Request]:
    """Requests from a BurstGPT CSV (``Timestamp, Model, Request tokens, Response tokens,
    Total tokens, Log Type``).

    Rows with zero response tokens are failed requests in BurstGPT and are skipped; ``model``
    keeps only that model's rows (e.g. ``ChatGPT``, ``GPT-4``). Arrival times are relative to
    the earliest kept row and multiplied by ``time_scale`` (0.5 replays twice as fast). A
    zero-token prompt is counted as one token, the least a request can carry. ``limit``
    stops after that many kept requests.
    """
    if not time_scale > 0 or not math.isfinite(time_scale):
        raise ValueError(f"time_scale must be > 0, got {time_scale!r}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if isinstance(path_or_file, str | os.PathLike):
        with open(path_or_file, newline="", encoding="utf-8") as handle:
            return _read_burstgpt(handle, str(path_or_file), time_scale, model, limit)
    name = getattr(path_or_file, "name", "<stream>")
    return _read_burstgpt(path_or_file, str(name), time_scale, model, limit)


def _read_burstgpt(
    handle: Iterable[str] | io.TextIOBase, where: str, time_scale: float, model: str | None, limit: int | None
) -> list[Request]:
    reader = csv.DictReader(handle)
    header = [name.strip() for name in reader.fieldnames or []]
    for column in BURSTGPT_COLUMNS:
        if column not in header:
            raise ValueError(f"{where}: BurstGPT CSV has no {column!r} column (header: {', '.join(header)})")
    reader.fieldnames = header
    rows: list[tuple[float, int, int]] = []
    for row in reader:
        if limit is not None and len(rows) >= limit:
            break
        line = reader.line_num
        if model is not None and (row.get("Model") or "").strip() != model:
            continue
        timestamp = _cell(row, "Timestamp", float, where, line)
        prompt = _cell(row, "Request tokens", int, where, line)
        response = _cell(row, "Response tokens", int, where, line)
        if response == 0:
            continue
        rows.append((timestamp, max(prompt, 1), response))
    rows.sort(key=lambda r: r[0])  # stable: ties keep file order
    start = rows[0][0] if rows else 0.0
    return [Request(i, (t - start) * time_scale, p, r) for i, (t, p, r) in enumerate(rows)]


def _cell(row: dict[str, str | None], column: str, kind: type, where: str, line: int) -> float | int:
    raw = (row.get(column) or "").strip()
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{where}: line {line}: column {column!r} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{where}: line {line}: column {column!r} must be >= 0, got {raw!r}")
    if kind is int:
        if not value.is_integer():
            raise ValueError(f"{where}: line {line}: column {column!r} must be a whole number, got {raw!r}")
        return int(value)
    return value


@dataclass(frozen=True)
class Buckets:
    """A grid of (input length, output length) buckets, as Mélange slices a workload.

    Edges are inclusive upper bounds: a length goes to the first bucket whose edge is >= it,
    and the last bucket also takes everything longer.
    """

    input_edges: list[int]
    output_edges: list[int]

    def __post_init__(self) -> None:
        for name in ("input_edges", "output_edges"):
            edges = getattr(self, name)
            if not edges or any(not isinstance(e, int) or e < 1 for e in edges):
                raise ValueError(
                    f"bucket {name} must be a non-empty list of positive integers, got {edges!r}"
                )
            if any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
                raise ValueError(f"bucket {name} must be strictly increasing, got {edges!r}")

    @property
    def size(self) -> int:
        return len(self.input_edges) * len(self.output_edges)

    @staticmethod
    def _slot(edges: list[int], length: int) -> int:
        return min(bisect.bisect_left(edges, length), len(edges) - 1)

    def index(self, input_tokens: int, output_tokens: int) -> int:
        """Row-major: input bucket * len(output_edges) + output bucket."""
        return self._slot(self.input_edges, input_tokens) * len(self.output_edges) + self._slot(
            self.output_edges, output_tokens
        )

    def bounds(self, i: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """Bucket ``i``'s inclusive ``(lo, hi)`` input and output ranges."""
        if not 0 <= i < self.size:
            raise IndexError(f"bucket {i} out of range 0..{self.size - 1}")
        row, col = divmod(i, len(self.output_edges))

        def span(edges: list[int], k: int) -> tuple[int, int]:
            return (edges[k - 1] + 1 if k else 1), edges[k]

        return span(self.input_edges, row), span(self.output_edges, col)

    def representative(self, i: int) -> tuple[int, int]:
        """A length pair inside bucket ``i`` to simulate it by: the geometric midpoint of each range
        (lengths are spread log-uniformly far more than linearly)."""
        (ilo, ihi), (olo, ohi) = self.bounds(i)
        return round(math.sqrt(ilo * ihi)), round(math.sqrt(olo * ohi))

    def histogram(self, requests: list[Request]) -> list[float]:
        """The share of ``requests`` in each bucket (all zeros for no requests)."""
        counts = [0] * self.size
        for r in requests:
            counts[self.index(r.input_tokens, r.output_tokens)] += 1
        total = len(requests)
        return [c / total if total else 0.0 for c in counts]


DEFAULT_BUCKETS = Buckets([128, 512, 2048, 8192], [64, 256, 1024])

CHAT_INPUTS = LengthDist.lognormal(256, 0.8, 8, 2048)
CHAT_OUTPUTS = LengthDist.lognormal(192, 0.8, 8, 1024)
SUMMARY_INPUTS = LengthDist.lognormal(4096, 0.35, 2048, 8192)
SUMMARY_OUTPUTS = LengthDist.lognormal(128, 0.5, 16, 512)


def short_chat(rate: float, duration_s: float = 60.0, seed: int = 0) -> list[Request]:
    """Chat turns: a few hundred tokens in and out (ShareGPT-like, log-normal)."""
    return poisson(rate, duration_s, inputs=CHAT_INPUTS, outputs=CHAT_OUTPUTS, seed=seed)


def summarisation(rate: float, duration_s: float = 60.0, seed: int = 0) -> list[Request]:
    """Long documents in (2k-8k tokens), short summaries out: prefill-heavy."""
    return poisson(rate, duration_s, inputs=SUMMARY_INPUTS, outputs=SUMMARY_OUTPUTS, seed=seed)


def mixed_80_20(rate: float, duration_s: float = 60.0, seed: int = 0) -> list[Request]:
    """One Poisson stream at ``rate`` in which each request is chat (80%) or summarisation (20%)."""
    requests = poisson(rate, duration_s, inputs=CHAT_INPUTS, outputs=CHAT_OUTPUTS, seed=seed)
    kinds = random.Random(f"{seed}:mix")
    lengths = random.Random(f"{seed}:summaries")
    for r in requests:
        if kinds.random() >= 0.8:
            r.input_tokens, r.output_tokens = SUMMARY_INPUTS.sample(lengths), SUMMARY_OUTPUTS.sample(lengths)
    return requests
