"""What serving Workloads report, as the Deployment pages show it: the latency each replica
last reported against the SLO, and request rate, latency, KV-cache use and prefix-cache hit
rate over the last hour.

The agent sends each Workload's numeric /stats values (agents/runtimes/serve/metrics.py)
under the raw sample's ``workloads``, flattened one level (agents.agent.flat_numbers):
requestsTotal, kvBlocksUsed/Free/Total, ``ttftSeconds.p99``, ``tpotSeconds.p50``, and the
engine's prefix cache as ``prefixCache.hits``, ``prefixCache.hitTokens`` ... Callers pass
the replicas only: a router's numbers are not a replica's.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from statistics import fmean
from typing import Any

from django.utils.safestring import SafeString

from common.timeutil import now
from controlplane.telemetry.models import RawSample
from dashboard.charts import Series, line_chart

CHART_WINDOW = timedelta(hours=1)
QUANTILES = ("p99", "p50")
PREFIX_CACHE = "prefixCache."
# Cumulative counters since the runtime started, and gauges, as the engine names them.
PREFIX_COUNTERS = ("hits", "misses", "hitTokens", "promptTokens", "evictions", "pinsBroken")
PREFIX_GAUGES = ("cachedBlocks", "pinnedBlocks")


def latency_ms(metrics: dict[str, float], which: str) -> tuple[float, str] | None:
    """(milliseconds, quantile) of ``ttft``/``tpot`` in one Workload's metrics; p99 preferred."""
    for quantile in QUANTILES:
        value = metrics.get(f"{which}Seconds.{quantile}")
        if value is not None:
            return value * 1000.0, quantile
    return None


def kv_blocks(metrics: dict[str, float]) -> tuple[float, float] | None:
    """(used, total) KV-cache blocks, or None when the Workload does not report them."""
    used = metrics.get("kvBlocksUsed")
    total = metrics.get("kvBlocksTotal")
    if total is None and used is not None and metrics.get("kvBlocksFree") is not None:
        total = used + metrics["kvBlocksFree"]
    if used is None or not total:
        return None
    return used, total


def measured(workloads: list[dict[str, Any]], latest: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The slowest replica's reported TTFT and TPOT, from its node's newest sample."""
    worst: dict[str, tuple[float, str]] = {}
    for w in workloads:
        metrics = ((latest.get(w["node"]) or {}).get("workloads") or {}).get(w["name"])
        for which in ("ttft", "tpot"):
            value = latency_ms(metrics, which) if metrics else None
            if value is not None and value[0] >= worst.get(which, (-1.0, ""))[0]:
                worst[which] = value
    return worst


def slo_lines(spec: dict[str, Any], worst: dict[str, tuple[float, str]]) -> list[dict[str, Any]]:
    """TTFT and TPOT: target, measured (or None) and whether the measurement meets the target."""
    slo = spec.get("slo") or {}
    lines = []
    for which, key in (("ttft", "ttftMs"), ("tpot", "tpotMs")):
        target = slo.get(key)
        value, quantile = worst.get(which, (None, ""))
        css = ""
        if value is not None and target:
            css = "ok" if value <= target else "bad"
        lines.append(
            {
                "metric": which,
                "label": which.upper(),
                "target": target,
                "value": value,
                "quantile": quantile,
                "css": css,
            }
        )
    return lines


def _minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def _samples(workloads: list[dict[str, Any]], since: datetime) -> dict[datetime, dict[str, list[dict]]]:
    """Raw telemetry of these Workloads since ``since``, by minute and Workload (one query).

    Only raw samples carry Workload metrics, and they are kept for the last hour.
    """
    nodes = {w["node"] for w in workloads if w["node"]}
    names = {w["name"] for w in workloads}
    by_minute: dict[datetime, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    if not nodes:
        return by_minute
    rows = RawSample.objects.filter(node__in=nodes, at__gte=since).order_by("at")
    for at, reported in rows.values_list("at", "workloads"):
        for name, metrics in (reported or {}).items():
            if name in names and isinstance(metrics, dict):
                by_minute[_minute(at)][name].append({"at": at, **metrics})
    return by_minute


def _request_rates(by_minute: dict[datetime, dict[str, list[dict]]]) -> dict[datetime, float]:
    """Requests per second per minute, summed over replicas, from requestsTotal counter deltas.

    A counter that went down (a restarted runtime) starts over; that interval is skipped.
    """
    last: dict[str, tuple[datetime, float]] = {}
    rates: dict[datetime, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for minute in sorted(by_minute):
        for name, samples in by_minute[minute].items():
            for sample in samples:
                total = sample.get("requestsTotal")
                if total is None:
                    continue
                previous = last.get(name)
                last[name] = (sample["at"], total)
                if previous is None:
                    continue
                seconds = (sample["at"] - previous[0]).total_seconds()
                if seconds > 0 and total >= previous[1]:
                    rates[minute][name].append((total - previous[1]) / seconds)
    return {minute: sum(fmean(v) for v in per.values()) for minute, per in rates.items()}


def _latency(by_minute: dict[datetime, dict[str, list[dict]]], which: str) -> dict[datetime, float]:
    """Mean over replicas and samples of each minute's reported latency, in ms."""
    found = {}
    for minute, per in by_minute.items():
        values = [v[0] for samples in per.values() for s in samples if (v := latency_ms(s, which))]
        if values:
            found[minute] = fmean(values)
    return found


def _kv_use(by_minute: dict[datetime, dict[str, list[dict]]]) -> dict[datetime, float]:
    """KV-cache blocks in use as % of all replicas' blocks, per minute."""
    found = {}
    for minute, per in by_minute.items():
        used = total = 0.0
        for samples in per.values():
            pairs = [p for s in samples if (p := kv_blocks(s))]
            if pairs:
                used += fmean(p[0] for p in pairs)
                total += fmean(p[1] for p in pairs)
        if total:
            found[minute] = 100.0 * used / total
    return found


def _restarted(previous: dict[str, Any], sample: dict[str, Any]) -> bool:
    """Whether the runtime restarted between two samples (its counters began again at zero):
    its uptime went down, or a counter did (a restart between two reports, or no uptime)."""
    before, uptime = previous.get("uptimeSeconds"), sample.get("uptimeSeconds")
    if before is not None and uptime is not None and uptime < before:
        return True
    return any(
        sample.get(PREFIX_CACHE + key, 0) < previous.get(PREFIX_CACHE + key, 0) for key in PREFIX_COUNTERS
    )


def _hit_rates(by_minute: dict[datetime, dict[str, list[dict]]]) -> dict[datetime, float]:
    """% of prompt tokens served from the prefix cache per minute, over all replicas: the sum
    of each replica's Δ hitTokens over the sum of its Δ promptTokens between consecutive
    samples. The interval across a restart is skipped, as a request rate's is."""
    last: dict[str, dict[str, Any]] = {}
    hit: dict[datetime, float] = defaultdict(float)
    prompt: dict[datetime, float] = defaultdict(float)
    hits_key, prompts_key = PREFIX_CACHE + "hitTokens", PREFIX_CACHE + "promptTokens"
    for minute in sorted(by_minute):
        for name, samples in by_minute[minute].items():
            for sample in samples:
                if sample.get(hits_key) is None or sample.get(prompts_key) is None:
                    continue
                previous, last[name] = last.get(name), sample
                if previous is None or _restarted(previous, sample):
                    continue
                hit[minute] += sample[hits_key] - previous[hits_key]
                prompt[minute] += sample[prompts_key] - previous[prompts_key]
    return {minute: 100.0 * hit[minute] / total for minute, total in prompt.items() if total > 0}


def prefix_cache_figures(
    workloads: list[dict[str, Any]], latest: dict[str, dict[str, Any]]
) -> dict[str, float | None] | None:
    """The replicas' prefix-cache counters and gauges summed from their nodes' newest samples,
    with the hit rate over every prompt token so far; None when no replica reports any."""
    totals: dict[str, float] = dict.fromkeys(PREFIX_COUNTERS + PREFIX_GAUGES, 0.0)
    reporting = 0
    for w in workloads:
        metrics = ((latest.get(w["node"]) or {}).get("workloads") or {}).get(w["name"]) or {}
        found = {k.removeprefix(PREFIX_CACHE): v for k, v in metrics.items() if k.startswith(PREFIX_CACHE)}
        if not found:
            continue
        reporting += 1
        for key in totals:
            totals[key] += float(found.get(key) or 0.0)
    if not reporting:
        return None
    prompts = totals["promptTokens"]
    rate = 100.0 * totals["hitTokens"] / prompts if prompts else None
    return {**totals, "hitRate": rate, "replicas": float(reporting)}


def _points(values: dict[datetime, float], minutes: list[datetime]) -> list[tuple[datetime, float | None]]:
    """One point per minute of the window; a minute without data breaks the line."""
    return [(m, values.get(m)) for m in minutes]


def charts(workloads: list[dict[str, Any]]) -> dict[str, SafeString]:
    """Request rate, TTFT/TPOT, KV-cache use and prefix-cache hit rate over the last hour (or
    each chart's empty note)."""
    end = _minute(now())
    minutes = [end - timedelta(minutes=n) for n in range(int(CHART_WINDOW.total_seconds() // 60), -1, -1)]
    by_minute = _samples(workloads, minutes[0])
    return {
        "requests": line_chart(
            [Series("requests/s", _points(_request_rates(by_minute), minutes))],
            title="Request rate",
            unit="req/s",
        ),
        "latency": line_chart(
            [
                Series("TTFT", _points(_latency(by_minute, "ttft"), minutes)),
                Series("TPOT", _points(_latency(by_minute, "tpot"), minutes)),
            ],
            title="Latency",
            unit="ms",
        ),
        "kv": line_chart(
            [Series("KV cache in use", _points(_kv_use(by_minute), minutes))],
            title="KV cache in use",
            unit="%",
            y_max=100.0,
        ),
        "prefix_cache": line_chart(
            [Series("prompt tokens from the cache", _points(_hit_rates(by_minute), minutes))],
            title="Prefix-cache hit rate",
            unit="%",
            y_max=100.0,
        ),
    }
