"""Trace replay: a BurstGPT trace loaded for a run, and its own requests served on an allocation.

The planners size for a trace's mean rate and length histogram and predict on Poisson
arrivals. Serving the trace's requests themselves (and the same requests arriving as a
Poisson stream) on what they chose separates what the bursts cost from what the planners'
model of the traffic misses. ``flotilla bench schedulers --trace`` is the user, so a trace
that cannot be used is a TraceError naming the bench flag to change.
"""

from __future__ import annotations

import csv
import math
import os
import random
import statistics
from dataclasses import dataclass
from typing import Any

from plugins.sim.profiles import GpuProfile
from plugins.sim.simulator import RequestResult, SimResult, simulate
from plugins.sim.slo import Slo
from plugins.sim.workload import BURSTGPT_COLUMNS, Buckets, Request, load_burstgpt

SAMPLE_TRACE = "examples/traces/burstgpt-sample.csv"


class TraceError(ValueError):
    """A trace flag that cannot be used; the message names the flag and what to do."""


@dataclass
class Trace:
    """A BurstGPT trace to replay: its requests (arrivals from 0, sorted) and where they came from."""

    path: str
    requests: list[Request]
    time_scale: float = 1.0
    model: str | None = None

    @property
    def name(self) -> str:
        return f"trace {os.path.basename(self.path)}"

    @property
    def duration_s(self) -> float:
        return self.requests[-1].arrival_s

    @property
    def rate(self) -> float:
        """Requests over duration: the mean rate the planners size for."""
        return len(self.requests) / self.duration_s

    @property
    def cv(self) -> float:
        """Coefficient of variation of the inter-arrival gaps: 1 for Poisson, more for bursts."""
        gaps = [b.arrival_s - a.arrival_s for a, b in zip(self.requests, self.requests[1:], strict=False)]
        return statistics.pstdev(gaps) / statistics.fmean(gaps)

    def describe(self) -> dict[str, Any]:
        return {
            "file": os.path.basename(self.path),
            "path": self.path,
            "model": self.model,
            "timeScale": self.time_scale,
            "requests": len(self.requests),
            "durationS": round(self.duration_s, 3),
            "requestsPerSecond": round(self.rate, 4),
            "interArrivalCv": round(self.cv, 3),
        }


def load_trace(path: str, time_scale: float = 1.0, model: str | None = None) -> Trace:
    """The ``--trace`` file as a Trace; TraceError says which flag to change and how."""
    header = ",".join((*BURSTGPT_COLUMNS, "Total tokens", "Log Type"))
    if not time_scale > 0 or not math.isfinite(time_scale):
        raise TraceError(
            f"--time-scale must be a positive number (0.5 replays twice as fast), got {time_scale:g}"
        )
    if not os.path.isfile(path):
        raise TraceError(f"--trace {path}: no such file; give a BurstGPT CSV, e.g. --trace {SAMPLE_TRACE}")
    try:
        requests = load_burstgpt(path, time_scale=time_scale, model=model)
    except UnicodeDecodeError:
        raise TraceError(f"--trace {path}: not UTF-8 text; --trace takes a BurstGPT CSV ({header})") from None
    except (OSError, ValueError) as exc:
        raise TraceError(f"--trace {exc}; --trace takes a BurstGPT CSV ({header})") from None
    if not requests:
        raise TraceError(f"--trace {path}: no usable rows: {_why_empty(path, model)}")
    if requests[-1].arrival_s <= 0:
        raise TraceError(
            f"--trace {path}: {len(requests)} usable request(s), all at one timestamp; "
            "a rate needs at least two requests at different times"
        )
    return Trace(path, requests, time_scale, model)


def _why_empty(path: str, model: str | None) -> str:
    """Why a trace that loaded has no requests, for its error message."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
        rows = [(row.get("Model") or "").strip() for row in reader]
    if not rows:
        return "the file has a header and no rows"
    if model is not None and model not in rows:
        found = ", ".join(sorted(set(rows)))
        return f"no row has Model {model!r} (the file has {found}); fix --trace-model or leave it out"
    which = f"{model} rows" if model is not None else "rows"
    return f"all {which} have 0 response tokens, BurstGPT's failed requests, which are dropped"


def with_poisson_arrivals(requests: list[Request], seed: int = 1) -> list[Request]:
    """The same requests in the same order, arriving as a Poisson stream at their mean rate:
    replayed beside the trace, it separates what the bursts cost from what the lengths do."""
    rate = len(requests) / requests[-1].arrival_s
    rng, at, out = random.Random(seed), 0.0, []
    for r in requests:
        out.append(Request(r.id, at, r.input_tokens, r.output_tokens))
        at += rng.expovariate(rate)
    return out


def deal(
    requests: list[Request], routing: dict[str, list[float]], buckets: Buckets
) -> dict[str | None, list[Request]]:
    """Each request to a GPU type by its bucket's routing shares, deterministically: within a
    bucket, to the type furthest behind its share. ``None`` collects what no type takes."""
    streams: dict[str | None, list[Request]] = {t: [] for t in routing}
    streams[None] = []
    owed: dict[int, dict[str | None, float]] = {}
    for r in requests:
        bucket = buckets.index(r.input_tokens, r.output_tokens)
        shares: dict[str | None, float] = {t: s[bucket] for t, s in routing.items()}
        shares[None] = max(0.0, 1.0 - sum(shares.values()))
        credit = owed.setdefault(bucket, dict.fromkeys(shares, 0.0))
        for t, share in shares.items():
            credit[t] += share
        pick = max(credit, key=lambda t: credit[t])
        credit[pick] -= 1.0
        streams[pick].append(r)
    return streams


def replay(
    requests: list[Request],
    replicas: dict[str, int],
    profiles: dict[str, GpuProfile],
    routing: dict[str, list[float]],
    buckets: Buckets,
    slo: Slo,
) -> dict[str, Any]:
    """Serve these very requests on ``replicas`` (type → count) and judge them against ``slo``.

    Each request goes to a type by ``routing`` (each profiled type's share of every bucket
    of ``buckets``; see :func:`deal`), each type's replicas behind a least-loaded dispatcher.
    What no type takes, a type without a profile included, counts as a miss.
    """
    results: list[RequestResult] = []
    for gpu_type, stream in deal(requests, routing, buckets).items():
        if gpu_type is None:
            results += [
                RequestResult(r.id, r.arrival_s, math.inf, math.inf, math.inf, 0, True) for r in stream
            ]
        elif stream:
            results += simulate(stream, profiles[gpu_type], instances=replicas[gpu_type]).requests
    outcome = SimResult(results, requests[-1].arrival_s if requests else 0.0, sum(replicas.values()))
    summary = outcome.summary()
    ttft, tpot = summary["ttftMs"]["p90"], summary["tpotMs"]["p90"]
    return {
        "sloAttainment": round(outcome.attainment(slo.ttft_ms, slo.tpot_ms), 4),
        "ttftP90Ms": round(ttft, 2) if ttft is not None else None,
        "tpotP90Ms": round(tpot, 3) if tpot is not None else None,
        "requests": len(results),
    }
