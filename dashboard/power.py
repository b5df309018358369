"""A Cluster's Power card: budget, draw, headroom, the capped GPUs and the PowerWithinBudget
condition, and a chart of the cluster's draw against its budget.

The figures are the powercap controller's (``Cluster.status.power`` and the condition,
written by controlplane/controllers/powercap.py): the card shows what the controller saw
and decided, not a second reading of telemetry that could disagree with it. Only the
chart reads telemetry, summed over the cluster's nodes
(:func:`controlplane.telemetry.store.cluster_power_series`), with the cluster's
power-cap events marked on it.

The status is written by a controller, but it is still read defensively: a field of the
wrong type shows as unknown, lists are cut to what a page can hold, and every string is
shortened and left to the template's escaping.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.utils.safestring import SafeString

from common.specs import PRIORITY_NAMES, name_problem
from common.timeutil import now, parse_rfc3339
from controlplane.conditions import get_condition
from controlplane.models import Event, Resource
from controlplane.telemetry import store as telemetry
from dashboard.charts import Series, line_chart
from dashboard.common import number, pct

CONDITION = "PowerWithinBudget"
POWER_EVENTS = ("PowerCapsApplied", "PowerCapsLifted", "PowerBudgetUnmeetable")
WINDOWS = {"1h": timedelta(hours=1), "6h": timedelta(hours=6), "24h": timedelta(hours=24)}
DEFAULT_WINDOW = "1h"
CHART_POINTS = 120
BUDGET_COLOR = "#b91c1c"
MAX_CAPPED_ROWS = 64  # the controller keeps at most 64; a hand-written status may hold more
MAX_STALE_SHOWN = 32
MAX_MARKS = 100
MAX_TEXT = 300  # condition messages, owners and policy names: more is not a status, it is noise
PRIORITY_BY_VALUE = {value: name for name, value in PRIORITY_NAMES.items()}


def _text(value: Any, limit: int = MAX_TEXT) -> str:
    text = value if isinstance(value, str) else ""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _name(value: Any) -> str | None:
    """An object name safe to put in a URL (a DNS-1123 label), else None: shown, not linked."""
    return value if name_problem(value) is None else None


def priority_label(value: Any) -> str:
    """``batch (10)`` for a named class, the number alone otherwise, ``?`` when unreadable."""
    if isinstance(value, bool) or not isinstance(value, int):
        return "?"
    name = PRIORITY_BY_VALUE.get(value)
    return f"{name} ({value})" if name else str(value)


def _owner(value: Any) -> dict[str, Any]:
    """``Deployment/chat`` -> its page's URL name and the object's name, for a link."""
    text = _text(value, 140)
    kind, _, name = text.partition("/")
    page = {"Deployment": "deployment", "TrainingJob": "job"}.get(kind)
    return {"text": text, "page": page if page and _name(name) else None, "name": name}


def capped_row(entry: dict[str, Any]) -> dict[str, Any]:
    """One capped GPU as the table shows it."""
    limit, board = number(entry.get("limitWatts")), number(entry.get("maxWatts"))
    gpu = entry.get("gpu")
    return {
        "node": _text(entry.get("node"), 63),
        "node_link": _name(entry.get("node")),
        "gpu": gpu if isinstance(gpu, int) and not isinstance(gpu, bool) else "?",
        "limit": limit,
        "max": board,
        "cut": board - limit if limit is not None and board is not None else None,
        "share": pct(limit, board) if limit is not None and board else None,
        "owner": _owner(entry.get("owner")) if entry.get("owner") else None,
        "priority": entry.get("priority") if isinstance(entry.get("priority"), int) else -1,
        "priority_label": priority_label(entry.get("priority")),
    }


def _condition(status: dict[str, Any]) -> dict[str, Any] | None:
    found = get_condition(status, CONDITION)
    if not isinstance(found, dict):
        return None
    return {
        "status": _text(found.get("status"), 16),
        "reason": _text(found.get("reason"), 64),
        "message": _text(found.get("message")),
        "since": _text(found.get("lastTransitionTime"), 40),
    }


def power_context(cluster: Resource) -> dict[str, Any]:
    """What the Power card shows; ``reported`` False: the controller has written nothing yet."""
    spec = cluster.spec if isinstance(cluster.spec, dict) else {}
    status = cluster.status if isinstance(cluster.status, dict) else {}
    power = status.get("power") if isinstance(status.get("power"), dict) else {}
    spec_budget = number(spec.get("powerBudgetWatts"))
    budget = number(power.get("budgetWatts")) if power else spec_budget
    draw = number(power.get("drawWatts"))
    headroom = number(power.get("headroomWatts"))
    if headroom is None and draw is not None and budget is not None:
        headroom = budget - draw
    entries = [e for e in power.get("capped") or [] if isinstance(e, dict)] if power else []
    rows = sorted(
        (capped_row(e) for e in entries[:MAX_CAPPED_ROWS]),
        key=lambda r: (r["priority"], r["node"], str(r["gpu"])),
    )
    capped_count = number(power.get("cappedGpus"))
    stale = [_text(n, 63) for n in power.get("staleNodes") or [] if isinstance(n, str)] if power else []
    updated = _text(power.get("updatedAt"), 40)
    try:
        updated_at = parse_rfc3339(updated)
    except ValueError:
        updated_at = None
    policies = spec.get("policies") if isinstance(spec.get("policies"), dict) else {}
    return {
        "reported": bool(power),
        "policy": _text(power.get("policy"), 63) or _text(policies.get("powercap"), 63),
        "budget": budget,
        "spec_budget": spec_budget,
        "budget_changed": bool(power) and spec_budget is not None and spec_budget != budget,
        "draw": draw,
        "draw_pct": pct(draw, budget),
        "over": headroom is not None and headroom < 0,
        "over_by": -headroom if headroom is not None and headroom < 0 else None,
        "headroom": headroom,
        "gpus": number(power.get("gpus")),
        "capped_count": int(capped_count) if capped_count is not None else len(entries),
        "cap_watts": number(power.get("capWatts")),
        "shortfall": number(power.get("shortfallWatts")),
        "stale": stale[:MAX_STALE_SHOWN],
        "stale_more": max(0, len(stale) - MAX_STALE_SHOWN),
        "capped": rows,
        "capped_hidden": max(0, int(capped_count or 0) - len(rows)),
        "updated": updated,
        "updated_at": updated_at,
        "condition": _condition(status),
    }


def chart_window(value: str | None) -> str:
    """The chart's window from the query string: one of WINDOWS, anything else the default."""
    return value if value in WINDOWS else DEFAULT_WINDOW


def _marks(cluster: str, since: datetime) -> list[tuple[float, str]]:
    events = (
        Event.objects.filter(kind="Cluster", name=cluster, reason__in=POWER_EVENTS, last_seen__gte=since)
        .order_by("-last_seen")
        .values_list("last_seen", "reason", "message")[:MAX_MARKS]
    )
    return [(seen.timestamp(), f"{reason}: {_text(message, 200)}") for seen, reason, message in events]


def power_chart(cluster: Resource, window: str = DEFAULT_WINDOW) -> dict[str, Any]:
    """The cluster's summed draw over the window against its budget, power events marked."""
    moment = now()
    since = moment - WINDOWS[chart_window(window)]
    nodes = Resource.objects.filter(kind="Node", cluster=cluster.name).values_list("name", flat=True)
    samples = telemetry.cluster_power_series(list(nodes), since, moment, points=CHART_POINTS)
    points = [(parse_rfc3339(s["at"]), s["powerW"]) for s in samples]
    drawn = [(at, watts) for at, watts in points if watts is not None]
    draw = Series("draw", points)
    series = [draw]
    budget = number((cluster.spec or {}).get("powerBudgetWatts"))
    if budget is not None and drawn:  # without a drawn point the chart says "no data" instead
        # Across the whole window up to now, so an event of the last few seconds is marked too.
        series.append(Series("budget", [(points[0][0], budget), (moment, budget)], BUDGET_COLOR))
    chart: SafeString = line_chart(
        series,
        title="Power draw vs budget",
        unit="W",
        height=200,
        marks=_marks(cluster.name, since) if drawn else (),
    )
    return {
        "chart": chart,
        "window": chart_window(window),
        "windows": list(WINDOWS),
        "points": len(drawn),
        "peak": max((watts for _, watts in drawn), default=None),
        "budget": budget,
    }
