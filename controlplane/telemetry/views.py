"""Telemetry API: a node's series for charts, and the newest sample of many nodes.

Read-only and viewer-level: the numbers show load, not secrets. Agents write
telemetry through their heartbeat, not through these views.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.http import HttpRequest

from common.specs import name_problem
from common.timeutil import now, parse_rfc3339, rfc3339
from controlplane.errors import Invalid, NotFound
from controlplane.http import endpoint, int_param
from controlplane.models import Resource
from controlplane.telemetry import store

DEFAULT_RANGE_SECONDS = 3600
DEFAULT_LIMIT = 2000
MAX_LIMIT = 20_000
MAX_NODES = 5000


def moment_param(request: HttpRequest, name: str, default: datetime, at: datetime) -> datetime:
    """An RFC 3339 time, or a number of seconds before ``at`` ("3600" = an hour ago)."""
    raw = (request.GET.get(name) or "").strip()
    if not raw:
        return default
    try:
        seconds = float(raw)
    except ValueError:
        seconds = None
    if seconds is not None:
        if not 0 <= seconds <= 10 * 365 * 86400:
            raise Invalid(
                f"{name}={raw} is out of range",
                [{"field": name, "fix": f"send {name} as seconds ago (0 or more) or an RFC 3339 time"}],
            )
        return at - timedelta(seconds=seconds)
    try:
        parsed = parse_rfc3339(raw)
    except ValueError:
        parsed = None
    if parsed is None:
        raise Invalid(
            f"{name}={raw!r} is neither an RFC 3339 time nor a number of seconds ago",
            [{"field": name, "fix": f"send {name}=2025-01-01T00:00:00Z or {name}=3600"}],
        )
    return store.as_utc(parsed)


def device_param(request: HttpRequest) -> int | None:
    raw = (request.GET.get("device") or "").strip()
    if not raw:
        return None
    if not raw.isdigit():
        raise Invalid(
            f"device={raw!r} is not a device index",
            [{"field": "device", "fix": "send device=N with N a device index (0, 1, ...)"}],
        )
    return int(raw)


@endpoint({"GET": "viewer"})
def node_telemetry_view(request: HttpRequest, name: str) -> dict[str, Any]:
    if not Resource.objects.filter(kind="Node", name=name).exists():
        raise NotFound(
            f"node/{name} not found",
            [{"field": "name", "fix": "list nodes with GET /api/v1/nodes"}],
        )
    moment = now()
    until = moment_param(request, "until", moment, moment)
    since = moment_param(request, "since", until - timedelta(seconds=DEFAULT_RANGE_SECONDS), moment)
    if since > until:
        raise Invalid(
            f"since ({rfc3339(since)}) is after until ({rfc3339(until)})",
            [{"field": "since", "fix": "send a since earlier than until"}],
        )
    resolution = store.pick_resolution(request.GET.get("resolution") or "auto", since, moment)
    limit = int_param(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    # One point more than asked shows whether older points were left out.
    items = store.series(name, since, until, resolution, device_param(request), limit + 1)
    return {
        "node": name,
        "resolution": resolution,
        "since": rfc3339(since),
        "until": rfc3339(until),
        "truncated": len(items) > limit,
        "items": items[-limit:],
    }


@endpoint({"GET": "viewer"})
def latest_view(request: HttpRequest) -> dict[str, Any]:
    """``?nodes=a,b`` (default: every Node): each node's newest sample and their total power."""
    text = request.GET.get("nodes")
    if text is None or not text.strip():
        names = list(Resource.objects.filter(kind="Node").order_by("name").values_list("name", flat=True))
    else:
        names = [part.strip() for part in text.split(",") if part.strip()]
    if len(names) > MAX_NODES:
        raise Invalid(
            f"{len(names)} nodes asked for; the limit is {MAX_NODES}",
            [{"field": "nodes", "fix": "ask for fewer nodes at a time"}],
        )
    for node in names:
        if problem := name_problem(node):
            raise Invalid(f"node name {node!r} {problem}", [{"field": "nodes", "fix": "send nodes=a,b"}])
    found = store.latest_many(names)
    items = [found[node] for node in names if node in found]
    return {
        "items": items,
        "missing": [node for node in names if node not in found],
        "powerW": round(sum(item["powerW"] for item in items), 3),
    }
