"""Telemetry storage: record samples, fold them into minute averages, read them back.

Raw samples are kept for ``FLOTILLA_TELEMETRY_RAW_SECONDS`` (default an hour),
minute roll-ups for ``FLOTILLA_TELEMETRY_MINUTE_SECONDS`` (default a week), so
storage stays bounded however long a fleet runs. Both are read at call time so
an operator can change them without a restart of the worker's settings.

Folding is idempotent because each batch of raw rows is rolled into the minute
rows and deleted in the same transaction: a raw row is counted once or not at all.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from django.db import transaction
from django.db.models import Max, Sum
from pydantic import ValidationError

from common.envhelpers import envint
from common.timeutil import now as utcnow
from common.timeutil import rfc3339
from controlplane.errors import Invalid
from controlplane.telemetry.models import COLUMN_STEMS, MinuteSample, RawSample
from controlplane.telemetry.schema import DEVICE_METRICS, TelemetrySample, problems

RAW_SECONDS_ENV = "FLOTILLA_TELEMETRY_RAW_SECONDS"
MINUTE_SECONDS_ENV = "FLOTILLA_TELEMETRY_MINUTE_SECONDS"
RESOLUTIONS = ("raw", "minute", "auto")
FOLD_BATCH = 2000  # raw rows per transaction: bounds memory and lock time on a backlog
QUERY_CHUNK = 200  # nodes per "latest" query, to stay far below SQLite's variable limit

Resolution = Literal["raw", "minute", "auto"]


def raw_seconds() -> int:
    return envint(RAW_SECONDS_ENV, 3600, minimum=1)


def minute_seconds() -> int:
    return envint(MINUTE_SECONDS_ENV, 7 * 86400, minimum=60)


def floor_minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


# --- writing ----------------------------------------------------------------------


def validate(sample: TelemetrySample | dict[str, Any]) -> TelemetrySample:
    """A TelemetrySample, or Invalid naming each bad field as ``telemetry.<path>``."""
    if isinstance(sample, TelemetrySample):
        return sample
    if not isinstance(sample, dict):
        raise Invalid(
            "telemetry must be an object",
            [{"field": "telemetry", "fix": 'send {"devices": [...], "workloads": {...}}'}],
        )
    try:
        return TelemetrySample.model_validate(sample)
    except ValidationError as exc:
        raise Invalid("telemetry is malformed", problems(exc, "telemetry")) from None


def record(node_name: str, sample: TelemetrySample | dict[str, Any], at: datetime | None = None) -> None:
    """Store one sample; a second sample for the same node and moment replaces the first."""
    parsed = validate(sample)
    row = RawSample(
        node=node_name,
        at=at or utcnow(),
        devices=[d.model_dump(exclude_none=True) for d in sorted(parsed.devices, key=lambda d: d.index)],
        workloads=parsed.workloads,
    )
    RawSample.objects.bulk_create(
        [row], update_conflicts=True, unique_fields=["node", "at"], update_fields=["devices", "workloads"]
    )


# --- folding raw samples into minutes -----------------------------------------------


@dataclass
class Rollup:
    """Running sums, counts and maxima of one device's metrics over one minute.

    A metric a device does not report (None) is left out of its average rather
    than counted as zero, so a GPU without a temperature sensor does not look cold.
    """

    samples: int = 0
    sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    maxima: dict[str, float] = field(default_factory=dict)

    def add(self, device: dict[str, Any]) -> None:
        self.samples += 1
        for metric in DEVICE_METRICS:
            value = device.get(metric)
            if value is not None:
                self._take(metric, float(value), float(value), 1)

    def absorb(self, row: MinuteSample) -> None:
        """Fold in a stored minute row (a late sample for a minute already folded).

        The stored average is weighted by the row's sample count: exact whenever
        a metric was reported in every sample of the minute, as it is in practice.
        """
        self.samples += row.samples
        for metric, stem in COLUMN_STEMS.items():
            avg, peak = getattr(row, f"{stem}_avg"), getattr(row, f"{stem}_max")
            if avg is not None and row.samples:
                self._take(metric, avg * row.samples, peak if peak is not None else avg, row.samples)

    def _take(self, metric: str, total: float, peak: float, count: int) -> None:
        self.sums[metric] += total
        self.counts[metric] += count
        self.maxima[metric] = max(peak, self.maxima.get(metric, peak))

    def average(self, metric: str) -> float | None:
        count = self.counts.get(metric, 0)
        return self.sums[metric] / count if count else None

    def columns(self) -> dict[str, Any]:
        values: dict[str, Any] = {"samples": self.samples}
        for metric, stem in COLUMN_STEMS.items():
            values[f"{stem}_avg"] = self.average(metric)
            values[f"{stem}_max"] = self.maxima.get(metric)
        return values

    def as_device(self, index: int) -> dict[str, Any]:
        """The API shape: the same keys as a raw device (averages), plus ``<key>Max`` and samples."""
        device: dict[str, Any] = {"index": index, "samples": self.samples}
        for metric in DEVICE_METRICS:
            average = self.average(metric)
            device[metric] = None if average is None else round(average, 3)
            device[f"{metric}Max"] = self.maxima.get(metric)
        return device


def fold(rows: Iterable[RawSample], device: int | None = None) -> dict[tuple[datetime, int], Rollup]:
    """Roll raw rows up by (minute, device index)."""
    rollups: dict[tuple[datetime, int], Rollup] = defaultdict(Rollup)
    for row in rows:
        minute = floor_minute(row.at)
        for sample in row.devices:
            if device is None or sample["index"] == device:
                rollups[(minute, sample["index"])].add(sample)
    return rollups


def _fold_batch(node: str, cutoff: datetime) -> tuple[int, int]:
    """Fold and delete up to FOLD_BATCH of a node's raw rows older than ``cutoff``."""
    with transaction.atomic():
        rows = list(
            RawSample.objects.select_for_update()
            .filter(node=node, at__lt=cutoff)
            .order_by("at")
            .only("id", "at", "devices")[:FOLD_BATCH]
        )
        if not rows:
            return 0, 0
        rollups = fold(rows)
        minutes = {minute for minute, _ in rollups}
        stored = {
            (row.minute, row.device): row
            for row in MinuteSample.objects.select_for_update().filter(node=node, minute__in=minutes)
        }
        created, updated = [], []
        for (minute, index), rollup in rollups.items():
            existing = stored.get((minute, index))
            if existing is None:
                created.append(MinuteSample(node=node, device=index, minute=minute, **rollup.columns()))
                continue
            rollup.absorb(existing)
            for column, value in rollup.columns().items():
                setattr(existing, column, value)
            updated.append(existing)
        MinuteSample.objects.bulk_create(created)
        if updated:
            MinuteSample.objects.bulk_update(updated, list(Rollup().columns()))
        RawSample.objects.filter(id__in=[row.id for row in rows]).delete()
        return len(rows), len(created) + len(updated)


def downsample(now: datetime | None = None) -> dict[str, int]:
    """Fold expired raw rows into minute rows, then drop minute rows past their retention.

    Only whole minutes are folded (the cutoff is rounded down to a minute), so a
    minute row is normally written once; a sample that arrives late for an
    already-folded minute is merged into it.
    """
    moment = now or utcnow()
    raw_cutoff = floor_minute(moment - timedelta(seconds=raw_seconds()))
    folded = written = 0
    nodes = list(RawSample.objects.filter(at__lt=raw_cutoff).values_list("node", flat=True).distinct())
    for node in nodes:
        while True:
            rows, minutes = _fold_batch(node, raw_cutoff)
            folded += rows
            written += minutes
            if rows < FOLD_BATCH:
                break
    expired, _ = MinuteSample.objects.filter(minute__lt=moment - timedelta(seconds=minute_seconds())).delete()
    return {"rawFolded": folded, "minuteWritten": written, "minuteExpired": expired}


# --- reading ------------------------------------------------------------------------


def pick_resolution(resolution: str, since: datetime, now: datetime | None = None) -> str:
    """``auto`` is raw while the whole range is still inside the raw window."""
    if resolution not in RESOLUTIONS:
        raise Invalid(
            f"resolution {resolution!r} is not one of {', '.join(RESOLUTIONS)}",
            [{"field": "resolution", "fix": "use raw, minute or auto"}],
        )
    if resolution != "auto":
        return resolution
    window_start = (now or utcnow()) - timedelta(seconds=raw_seconds())
    return "raw" if since >= window_start else "minute"


def _raw_item(row: RawSample, device: int | None) -> dict[str, Any]:
    devices = row.devices if device is None else [d for d in row.devices if d["index"] == device]
    return {"at": rfc3339(row.at), "devices": devices, "workloads": row.workloads}


def _raw_series(node: str, since: datetime, until: datetime, device: int | None, limit: int | None):
    rows = RawSample.objects.filter(node=node, at__gte=since, at__lte=until).order_by("-at")
    if limit is not None:
        rows = rows[:limit]
    return [_raw_item(row, device) for row in reversed(list(rows))]


def _minute_series(node: str, since: datetime, until: datetime, device: int | None, limit: int | None):
    """Stored minute rows plus raw rows not yet folded, rolled up on the fly.

    So a minute-resolution chart over the last day has no gap for the last hour.
    """
    start = floor_minute(since)
    stored = MinuteSample.objects.filter(node=node, minute__gte=start, minute__lte=until)
    raw = RawSample.objects.filter(node=node, at__gte=start, at__lte=until).only("at", "devices")
    if device is not None:
        stored = stored.filter(device=device)
    rollups = fold(raw, device)
    for row in stored:
        rollups[(row.minute, row.device)].absorb(row)
    by_minute: dict[datetime, list[dict[str, Any]]] = defaultdict(list)
    for (minute, index), rollup in sorted(rollups.items()):
        by_minute[minute].append(rollup.as_device(index))
    minutes = sorted(by_minute)
    if limit is not None:
        minutes = minutes[-limit:] if limit else []
    return [{"at": rfc3339(minute), "devices": by_minute[minute]} for minute in minutes]


def series(
    node_name: str,
    since: datetime,
    until: datetime | None = None,
    resolution: Resolution | str = "auto",
    device: int | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """A node's samples in [since, until], oldest first; ``limit`` keeps the newest points.

    Each item is ``{"at", "devices": [...]}`` at either resolution (raw items also
    carry ``workloads``); minute devices hold averages under the raw keys, plus
    ``<key>Max`` and ``samples``, so a chart reads both the same way.
    """
    until = until or utcnow()
    chosen = pick_resolution(resolution, since)
    reader = _raw_series if chosen == "raw" else _minute_series
    return reader(node_name, since, until, device, limit)


RECENT_SECONDS = 60.0


def _latest_rows(node_names: Iterable[str]) -> dict[str, RawSample]:
    """Each node's newest raw row, in a few index-served queries.

    First each node's newest moment, then the rows at those moments. The newest moments
    are looked for in the last minute first, where a reporting node has a few rows
    rather than an hour's worth (for many nodes, through the ``at`` index alone); only
    nodes silent for longer are looked up over the whole raw window. A correlated
    subquery, run once per candidate row, cost PostgreSQL most of a second at 1,000 nodes.
    """
    names = set(node_names)
    recent = RawSample.objects.filter(at__gte=utcnow() - timedelta(seconds=RECENT_SECONDS))
    newest: dict[str, datetime] = {}
    if len(names) > QUERY_CHUNK:
        newest = {n: t for n, t in _newest_moments(recent).items() if n in names}
    else:
        newest = _newest_moments(recent.filter(node__in=names))
    silent = sorted(names - set(newest))
    for start in range(0, len(silent), QUERY_CHUNK):
        newest.update(_newest_moments(RawSample.objects.filter(node__in=silent[start : start + QUERY_CHUNK])))
    found: dict[str, RawSample] = {}
    ordered = sorted(newest)
    for start in range(0, len(ordered), QUERY_CHUNK):
        chunk = ordered[start : start + QUERY_CHUNK]
        rows = RawSample.objects.filter(node__in=chunk, at__in={newest[n] for n in chunk})
        found.update((row.node, row) for row in rows if newest[row.node] == row.at)
    return found


def _newest_moments(queryset: Any) -> dict[str, datetime]:
    return dict(queryset.values("node").annotate(top=Max("at")).values_list("node", "top"))


def _latest_item(row: RawSample, moment: datetime) -> dict[str, Any]:
    return {
        "node": row.node,
        "at": rfc3339(row.at),
        "ageSeconds": round(max(0.0, (moment - row.at).total_seconds()), 3),
        "powerW": round(sum(d.get("powerW", 0.0) for d in row.devices), 3),
        "devices": row.devices,
        "workloads": row.workloads,
    }


def latest_many(node_names: Iterable[str]) -> dict[str, dict[str, Any]]:
    moment = utcnow()
    return {name: _latest_item(row, moment) for name, row in _latest_rows(node_names).items()}


def latest(node_name: str) -> dict[str, Any] | None:
    """The node's newest sample (within the raw window), or None if it has sent none."""
    return latest_many([node_name]).get(node_name)


def power_by_node(node_names: Iterable[str]) -> dict[str, float]:
    """Each reporting node's newest total power draw, in watts."""
    return {name: item["powerW"] for name, item in latest_many(node_names).items()}


def fleet_power(node_names: Iterable[str]) -> float:
    """Sum of the newest power draw of every device of these nodes, in watts.

    A node that stopped reporting still counts with its last sample until that
    sample leaves the raw window: for a power cap, over-counting is the safe side.
    """
    return round(sum(power_by_node(node_names).values()), 3)


def as_utc(moment: datetime) -> datetime:
    """Naive datetimes are taken as UTC, as the API documents."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# --- a cluster's power over time ------------------------------------------------------

MAX_POWER_POINTS = 1000
HOLD_SECONDS = 60.0  # a node's last reading stands in for a bucket it sent nothing in, this long
RAW_MARGIN_SECONDS = 300


@dataclass
class _NodeBucket:
    """One node's readings in one bucket: their weighted sum, and the newest one."""

    total: float = 0.0
    weight: float = 0.0
    last_end: float = float("-inf")
    last_value: float = 0.0

    def add(self, value: float, weight: float, end: float) -> None:
        self.total += value * weight
        self.weight += weight
        if end >= self.last_end:
            self.last_end, self.last_value = end, value


def _node_power(devices: list[dict[str, Any]]) -> float | None:
    """A raw sample's total draw; None when no device reported power (not a made-up zero)."""
    readings = [d["powerW"] for d in devices if isinstance(d, dict) and d.get("powerW") is not None]
    return sum(readings) if readings else None


def cluster_power_series(
    node_names: Iterable[str],
    since: datetime,
    until: datetime | None = None,
    points: int = 120,
) -> list[dict[str, Any]]:
    """These nodes' summed power draw over [since, until] in about ``points`` buckets, oldest first.

    Each item is ``{"at": bucket start (RFC 3339), "powerW": watts or None, "nodes": n}``.
    A bucket's draw is the sum over nodes of each node's mean draw in it, so a cluster's
    total does not depend on how many heartbeats happened to land in a bucket. Raw samples
    cover the last hour and minute rows what is older (the two never overlap: a raw row is
    deleted when it is folded), so a day's chart costs minute rows, not a day of samples;
    buckets are then at least a minute wide. A node silent in a bucket counts with its
    last reading for HOLD_SECONDS, so staggered heartbeats do not show as dips; a bucket
    nobody reported in is None (a gap in the line, not a fall to zero). Buckets are
    aligned to multiples of their width, so a polled chart's points do not shift.
    """
    if not isinstance(points, int) or isinstance(points, bool) or not 1 <= points <= MAX_POWER_POINTS:
        raise Invalid(
            f"points must be an integer from 1 to {MAX_POWER_POINTS}",
            [{"field": "points", "fix": f"ask for at most {MAX_POWER_POINTS} points"}],
        )
    until = until or utcnow()
    if until <= since:
        return []
    names = sorted(set(node_names))
    # Whole seconds; the small allowance keeps "an hour ending now" at 30 s buckets when
    # since and until were read from the clock a few milliseconds apart.
    width = max(1, math.ceil((until - since).total_seconds() / points - 0.01))
    # Minute rows cannot fill narrower buckets. The margin: a chart of "the last hour" starts
    # a moment before the raw window does, and its first minute or so may be folded already;
    # the hold bridges those few minute rows.
    if since < utcnow() - timedelta(seconds=raw_seconds() + RAW_MARGIN_SECONDS):
        width = max(60, math.ceil(width / 60) * 60)
    origin = math.floor(since.timestamp() / width) * width
    count = int((until.timestamp() - origin) // width) + 1
    by_node: dict[str, dict[int, _NodeBucket]] = defaultdict(lambda: defaultdict(_NodeBucket))

    def take(node: str, start: float, value: float, weight: float, end: float) -> None:
        index = int((start - origin) // width)
        if 0 <= index < count:
            by_node[node][index].add(value, weight, end)

    for first in range(0, len(names), QUERY_CHUNK):
        chunk = names[first : first + QUERY_CHUNK]
        raw = RawSample.objects.filter(node__in=chunk, at__gte=since, at__lte=until)
        for node, at, devices in raw.values_list("node", "at", "devices").iterator(chunk_size=FOLD_BATCH):
            value = _node_power(devices)
            if value is not None:
                moment = at.timestamp()
                take(node, moment, value, 1.0, moment)
        minutes = (
            MinuteSample.objects.filter(node__in=chunk, minute__gte=floor_minute(since), minute__lte=until)
            .values("node", "minute")
            .annotate(total=Sum("power_w_avg"), samples=Max("samples"))
            .values_list("node", "minute", "total", "samples")
        )
        for node, minute, total, samples in minutes:
            if total is not None:
                start = minute.timestamp()
                take(node, start, float(total), float(max(samples or 1, 1)), start + 60)
    totals = [0.0] * count
    reporting = [0] * count
    for buckets in by_node.values():
        for index, bucket in sorted(buckets.items()):
            totals[index] += bucket.total / bucket.weight
            reporting[index] += 1
            held = index + 1
            while held < count and held not in buckets:
                if origin + held * width - bucket.last_end >= HOLD_SECONDS:
                    break
                totals[held] += bucket.last_value
                reporting[held] += 1
                held += 1
    return [
        {
            "at": rfc3339(datetime.fromtimestamp(origin + index * width, UTC)),
            "powerW": round(totals[index], 3) if reporting[index] else None,
            "nodes": reporting[index],
        }
        for index in range(count)
    ]
