"""A page per Cluster: its capacity, its Power card and chart, conditions and events.

The Power card polls ``/clusters/NAME/power`` every 5 s (it reads one row); the chart
polls ``/clusters/NAME/power/chart`` every 30 s, because it reads the telemetry of every
node of the cluster, and a minute-old chart of an hour is current enough.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import path
from django.views.decorators.http import require_safe

from controlplane import store
from controlplane.models import Event, Resource
from dashboard.common import number
from dashboard.power import power_chart, power_context
from dashboard.roles import needs

NAME_MAX = 63
EVENTS_SHOWN = 20
COUNTS = ("total", "allocated", "free", "unhealthy")
STOP_POLLING = 286  # htmx cancels an element's polling on this status (and still swaps)


def _capacity(status: dict[str, Any]) -> dict[str, Any]:
    capacity = status.get("capacity") if isinstance(status.get("capacity"), dict) else {}
    gpus = capacity.get("gpus") if isinstance(capacity.get("gpus"), dict) else {}
    nodes = capacity.get("nodes") if isinstance(capacity.get("nodes"), dict) else {}
    types = [
        {"type": str(t)[:32], **{k: int(number(c.get(k)) or 0) for k in COUNTS}}
        for t, c in sorted(gpus.items())
        if isinstance(c, dict)
    ]
    return {
        "nodes": int(number(nodes.get("total")) or 0),
        "ready": int(number(nodes.get("ready")) or 0),
        "types": types,
        "cost": number(capacity.get("costPerHour")),
    }


def _page_context(cluster: Resource, window: str | None) -> dict[str, Any]:
    status = cluster.status if isinstance(cluster.status, dict) else {}
    policies = cluster.spec.get("policies") or {}
    events = Event.objects.filter(kind="Cluster", name=cluster.name).order_by("-last_seen")
    return {
        "cluster": cluster,
        "capacity": _capacity(status),
        "policies": policies if isinstance(policies, dict) else {},
        "conditions": [c for c in status.get("conditions") or [] if isinstance(c, dict)],
        "power": power_context(cluster),
        "chart": power_chart(cluster, window),
        "events": list(events[:EVENTS_SHOWN]),
    }


def _missing(request: HttpRequest, name: str) -> HttpResponse:
    return render(request, "dashboard/cluster_missing.html", {"name": name[:NAME_MAX]}, status=404)


@needs("viewer")
@require_safe
def cluster_page(request: HttpRequest, name: str) -> HttpResponse:
    cluster = store.find("Cluster", name)
    if cluster is None:
        return _missing(request, name)
    return render(request, "dashboard/cluster.html", _page_context(cluster, request.GET.get("window")))


@needs("viewer")
@require_safe
def cluster_power(request: HttpRequest, name: str) -> HttpResponse:
    """The Power card alone (polled); a deleted Cluster stops the polling."""
    cluster = store.find("Cluster", name)
    if cluster is None:
        return HttpResponse("", status=STOP_POLLING)
    context = {"cluster": cluster, "power": power_context(cluster)}
    return render(request, "dashboard/cluster_power.html", context)


@needs("viewer")
@require_safe
def cluster_power_chart(request: HttpRequest, name: str) -> HttpResponse:
    """The draw-against-budget chart alone (polled, and the window links swap it)."""
    cluster = store.find("Cluster", name)
    if cluster is None:
        return HttpResponse("", status=STOP_POLLING)
    context = {"cluster": cluster, "chart": power_chart(cluster, request.GET.get("window"))}
    return render(request, "dashboard/cluster_power_chart.html", context)


urlpatterns = [
    path("clusters/<str:name>/", cluster_page, name="cluster"),
    path("clusters/<str:name>/power", cluster_power, name="cluster-power"),
    path("clusters/<str:name>/power/chart", cluster_power_chart, name="cluster-power-chart"),
]
