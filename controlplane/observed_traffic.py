"""A serving Deployment's traffic measured from its replicas: ``status.observedWorkload``.

Each serving runtime counts the requests it finished by (input length, output length)
bucket on the sizing schedulers' edges, and reports those counts with its request total
and uptime in the runtime metrics the agent sends with every heartbeat
(``lengthCounts.<i>_<j>``, ``requestsTotal``, ``uptimeSeconds``; see
``agents/runtimes/serve/metrics.py``). Celery beat runs :func:`observe_all` every minute;
it writes, on each Deployment that has replicas reporting::

    observedWorkload:
      requestsPerSecond: 12.4     # summed over replicas, over the last WINDOW_SECONDS
      windowSeconds: 300          # the longest span a replica's rate was measured over
      histogram: {inputEdges, outputEdges, fractions}   # the shape of spec.workload.histogram
      requests: 5234              # finished requests behind the histogram
      observedAt: "2025-03-01T12:00:00Z"

The histogram is the sum of the replicas' latest cumulative counts, and is published only
once ``FLOTILLA_OBSERVED_MIN_REQUESTS`` requests are behind it; until then ``requests``
says how many there are so far. A replica restart begins its counts again at zero, so a
histogram once published is kept until a new one has the minimum behind it: a rolling
restart does not erase what was learned. The same goes for the rate while no replica has
been seen long enough to measure one.

The rate of one replica is the increase of its ``requestsTotal`` between its node's oldest
and newest sample in the window, over the time between them. A process that started
within the window (its uptime says so) restarted its counters: its rate is its total over
its uptime. A replica whose older reading is simply missing leaves the Deployment's rate
unmeasured this time (the last one published stays) rather than wrong.

Status is written through the store like any controller's (the writers' lock, then the
row), never through the spec path, so ``generation`` stays put; and only when something
changed enough to matter (the rate by RATE_TOLERANCE, a bucket's share by
FRACTION_TOLERANCE, a histogram appearing) or the last observation is older than
REFRESH_SECONDS. Steady traffic so costs one write per Deployment every ten minutes.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Max, Min

from agents.runtimes.serve.metrics import LENGTH_BUCKETS, length_key
from common.timeutil import now as utcnow
from common.timeutil import parse_rfc3339, rfc3339
from controlplane import store
from controlplane.errors import NotFound
from controlplane.models import Resource
from controlplane.telemetry.models import RawSample
from controlplane.telemetry.store import QUERY_CHUNK, raw_seconds

log = logging.getLogger(__name__)

# The edges the runtime counts on (the simulator's DEFAULT_BUCKETS).
BUCKETS = LENGTH_BUCKETS
LENGTH_PREFIX = "lengthCounts."
WINDOW_SECONDS = 300.0
# No rate until some replica was seen for this long: a few seconds of requests are noise.
MIN_RATE_SECONDS = 30.0
REFRESH_SECONDS = 600.0
RATE_TOLERANCE = 0.05  # relative
FRACTION_TOLERANCE = 0.01  # absolute share of one bucket
FIELD = "observedWorkload"


@dataclass
class Reading:
    """One replica's runtime metrics in one node sample."""

    at: datetime
    metrics: dict[str, float]


@dataclass
class Measurement:
    """What a Deployment's replicas showed: bucket counts (None: none reported them) and a
    request rate over ``window_seconds`` (None: no replica was seen long enough)."""

    counts: list[int] | None
    rate: float | None
    window_seconds: float = 0.0


# --- reading telemetry ---------------------------------------------------------------


def serving_replicas() -> dict[str, list[tuple[str, str]]]:
    """Each Deployment's Workloads by the Deployment's uid, as (workload name, node name)."""
    replicas: dict[str, list[tuple[str, str]]] = {}
    rows = Resource.objects.filter(kind="Workload", owner_ref__startswith="Deployment/").values_list(
        "name", "node_name", "owner_uid"
    )
    for name, node, owner_uid in rows:
        if node and owner_uid:
            replicas.setdefault(owner_uid, []).append((name, node))
    return replicas


def node_samples(
    nodes: Iterable[str], since: datetime, until: datetime
) -> dict[str, tuple[RawSample, RawSample]]:
    """Each node's oldest and newest raw sample in [since, until] (the same row when it has one).

    Two index-served queries per chunk of nodes, whatever the window holds: the rate needs
    only the ends of the window, and the uptime each runtime reports tells a restart apart.
    """
    names = sorted(set(nodes))
    found: dict[str, tuple[RawSample, RawSample]] = {}
    for start in range(0, len(names), QUERY_CHUNK):
        chunk = names[start : start + QUERY_CHUNK]
        ends = {
            node: (first, last)
            for node, first, last in RawSample.objects.filter(node__in=chunk, at__gte=since, at__lte=until)
            .values("node")
            .annotate(first=Min("at"), last=Max("at"))
            .values_list("node", "first", "last")
        }
        moments = {moment for pair in ends.values() for moment in pair}
        wanted = RawSample.objects.filter(node__in=chunk, at__in=moments).only("node", "at", "workloads")
        rows = {(row.node, row.at): row for row in wanted}
        for node, (first, last) in ends.items():
            if (node, first) in rows and (node, last) in rows:
                found[node] = (rows[(node, first)], rows[(node, last)])
    return found


def reading(row: RawSample, workload: str) -> Reading | None:
    metrics = (row.workloads or {}).get(workload)
    return Reading(row.at, metrics) if isinstance(metrics, dict) else None


def length_counts(metrics: dict[str, float]) -> list[int] | None:
    """A replica's cumulative counts per bucket (row-major), or None if it reports none."""
    if not any(key.startswith(LENGTH_PREFIX) for key in metrics):
        return None
    columns = len(BUCKETS.output_edges)
    keys = (LENGTH_PREFIX + length_key(*divmod(b, columns)) for b in range(BUCKETS.size))
    return [int(metrics.get(key, 0) or 0) for key in keys]


def replica_rate(first: Reading | None, last: Reading, window: float) -> tuple[float, float] | None:
    """(requests, seconds) one replica served over the window, or None when unknowable."""
    total = last.metrics.get("requestsTotal")
    if total is None:
        return None
    span = (last.at - first.at).total_seconds() if first is not None else 0.0
    before = first.metrics.get("requestsTotal") if first is not None else None
    uptime = last.metrics.get("uptimeSeconds")
    if uptime is not None and 0 < uptime <= window and (uptime < span or before is None):
        return total, uptime  # started within the window: its counters began at zero
    if before is None:
        return None  # running all along, but its older reading is missing
    if total < before:
        return total, span  # a reset without an uptime to date it: at least this many
    return total - before, span


def measure(
    replicas: list[tuple[str, str]],
    samples: dict[str, tuple[RawSample, RawSample]],
    window: float = WINDOW_SECONDS,
) -> Measurement:
    """Sum a Deployment's replicas: latest counts per bucket, and the rates of all of them.

    The rate is left unmeasured (None) when a reporting replica's share of it is unknown
    this time, rather than published too low, and when no replica was seen for
    MIN_RATE_SECONDS: a few seconds of requests are noise.
    """
    counts: list[int] | None = None
    rate, longest, complete = 0.0, 0.0, True
    for workload, node in replicas:
        if node not in samples:
            continue
        first_row, last_row = samples[node]
        last = reading(last_row, workload)
        if last is None:
            continue
        replica_counts = length_counts(last.metrics)
        if replica_counts is not None:
            counts = [a + b for a, b in zip(counts or [0] * BUCKETS.size, replica_counts, strict=True)]
        if "requestsTotal" not in last.metrics:
            continue
        served = replica_rate(reading(first_row, workload), last, window)
        if served is None or served[1] <= 0:
            complete = False
            continue
        rate += served[0] / served[1]
        longest = max(longest, served[1])
    measured = rate if complete and longest >= MIN_RATE_SECONDS else None
    return Measurement(counts, measured, longest)


# --- what to publish -----------------------------------------------------------------


def histogram(counts: list[int]) -> dict[str, Any]:
    """Counts as ``spec.workload.histogram``: rows are input buckets, columns output buckets."""
    total = sum(counts)
    columns = len(BUCKETS.output_edges)
    shares = [round(c / total, 4) if total else 0.0 for c in counts]
    return {
        "inputEdges": list(BUCKETS.input_edges),
        "outputEdges": list(BUCKETS.output_edges),
        "fractions": [shares[row * columns : (row + 1) * columns] for row in range(len(BUCKETS.input_edges))],
    }


def observation(
    previous: dict[str, Any], measured: Measurement, min_requests: int, moment: datetime
) -> dict[str, Any]:
    """The new ``observedWorkload``: what was measured, and what is kept from ``previous``
    where the measurement is short of it (fewer requests than the minimum, no rate).
    Empty when nothing was measured at all: no replica reported."""
    new: dict[str, Any] = {}
    if measured.rate is None and measured.counts is None:
        return new
    if measured.rate is not None:
        new["requestsPerSecond"] = round(measured.rate, 4)
        new["windowSeconds"] = round(measured.window_seconds)
    elif "requestsPerSecond" in previous:
        new["requestsPerSecond"] = previous["requestsPerSecond"]
        new["windowSeconds"] = previous.get("windowSeconds")
    requests = sum(measured.counts) if measured.counts is not None else None
    if requests is not None and requests >= min_requests:
        new["histogram"] = histogram(measured.counts or [])
        new["requests"] = requests
    elif "histogram" in previous:
        new["histogram"] = previous["histogram"]
        new["requests"] = previous.get("requests")
    elif requests is not None:
        new["requests"] = requests  # how many so far, short of the minimum
    if new:
        new["observedAt"] = rfc3339(moment)
    return new


def _differs(old: Any, new: Any, tolerance: float) -> bool:
    if not isinstance(old, int | float) or not isinstance(new, int | float):
        return old != new
    return abs(new - old) > tolerance * max(abs(old), abs(new), 1e-12)


def worth_writing(previous: dict[str, Any], new: dict[str, Any], moment: datetime) -> bool:
    """Whether ``new`` differs from ``previous`` enough to spend a status write on it."""
    if not new:
        return False
    if set(previous) != set(new):
        return True
    try:
        observed_at = parse_rfc3339(previous.get("observedAt"))
    except (AttributeError, TypeError, ValueError):
        observed_at = None  # a hand-written status
    if observed_at is None or (moment - observed_at).total_seconds() >= REFRESH_SECONDS:
        return True
    if "requestsPerSecond" in new and _differs(
        previous["requestsPerSecond"], new["requestsPerSecond"], RATE_TOLERANCE
    ):
        return True
    if "histogram" in new:
        old_h, new_h = previous["histogram"], new["histogram"]
        edges = ("inputEdges", "outputEdges")
        if not isinstance(old_h, dict) or any(old_h.get(k) != new_h[k] for k in edges):
            return True
        old_shares, new_shares = _shares(old_h), _shares(new_h)
        if old_shares is None or new_shares is None or len(old_shares) != len(new_shares):
            return True
        if any(abs(a - b) > FRACTION_TOLERANCE for a, b in zip(old_shares, new_shares, strict=True)):
            return True
    return False


def _shares(histogram_doc: dict[str, Any]) -> list[float] | None:
    """The flat fractions of a histogram document; None if it is not one (a hand-written status)."""
    try:
        return [float(value) for row in histogram_doc.get("fractions") or [] for value in row]
    except (TypeError, ValueError):
        return None


# --- writing --------------------------------------------------------------------------


def _previous(status: Any) -> dict[str, Any]:
    previous = status.get(FIELD) if isinstance(status, dict) else None
    return previous if isinstance(previous, dict) else {}


def publish(name: str, uid: str, measured: Measurement, min_requests: int, moment: datetime) -> bool:
    """Write the Deployment's observation if it is worth it, under the writers' lock; True if written."""
    with transaction.atomic():
        try:
            owner = store.get("Deployment", name, for_update=True)
        except NotFound:
            return False
        if str(owner.uid) != uid or owner.deletion_timestamp is not None:
            return False  # deleted, or deleted and created again since it was measured
        previous = _previous(owner.status)
        new = observation(previous, measured, min_requests, moment)
        if not worth_writing(previous, new, moment):
            return False
        status = copy.deepcopy(owner.status)
        status[FIELD] = new
        return store.update_status(owner, status)


def observe_all(now: datetime | None = None) -> dict[str, int]:
    """Measure every Deployment with replicas from the telemetry window, publish what changed.

    Telemetry is read and each measurement made without any lock; the writers' lock is
    taken only for the Deployments whose observation is worth a write.
    """
    moment = now or utcnow()
    min_requests = int(settings.FLOTILLA_OBSERVED_MIN_REQUESTS)
    since = moment - timedelta(seconds=min(WINDOW_SECONDS, raw_seconds()))
    replicas = serving_replicas()
    window = (moment - since).total_seconds()
    samples = node_samples({node for pairs in replicas.values() for _, node in pairs}, since, moment)
    measured = written = 0
    deployments = Resource.objects.filter(kind="Deployment", deletion_timestamp__isnull=True)
    for name, uid, status in deployments.values_list("name", "uid", "status"):
        pairs = replicas.get(str(uid))
        if not pairs:
            continue
        measurement = measure(pairs, samples, window)
        measured += 1
        previous = _previous(status)
        if worth_writing(previous, observation(previous, measurement, min_requests, moment), moment):
            written += publish(name, str(uid), measurement, min_requests, moment)
    if written:
        log.info("observed traffic: %d of %d deployments updated", written, measured)
    return {"measured": measured, "written": written}
