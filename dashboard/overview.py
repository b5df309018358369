"""The overview: every cluster's GPUs by type, their cost and power, what runs, what happened.

The page polls its own body (``/overview/live``) every 5 s while the tab is
visible, so it stays current without reloads. Everything is read with a few
aggregate queries: at 1,000 nodes a per-node loop would be the page's cost.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import path

from controlplane import fleet
from controlplane.conditions import get_condition
from controlplane.models import Event, Resource
from controlplane.telemetry import store as telemetry
from dashboard.common import number
from dashboard.roles import needs

UNASSIGNED = "(no cluster)"


def _clusters() -> list[dict[str, Any]]:
    view = fleet.snapshot()
    declared = Resource.objects.filter(kind="Cluster").values_list("name", "spec", "status")
    clusters = {name: spec for name, spec, _ in declared}
    statuses = {name: status for name, _, status in declared}
    by_cluster: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    nodes_in: dict[str, list[str]] = defaultdict(list)
    node_counts: dict[str, Counter] = defaultdict(Counter)
    for node in view.nodes:
        cluster = node.cluster or UNASSIGNED
        nodes_in[cluster].append(node.name)
        node_counts[cluster]["total"] += 1
        node_counts[cluster]["ready"] += node.ready
        node_counts[cluster]["cordoned"] += not node.schedulable
        for gpu in node.gpus:
            counts = by_cluster[cluster][gpu.type]
            counts["total"] += 1
            if not gpu.healthy or not node.ready:
                counts["unhealthy"] += 1
            elif gpu.allocated_to:
                counts["allocated"] += 1
            else:
                counts["free"] += 1
    # One read of every node's newest sample, summed per cluster below.
    power = telemetry.power_by_node(n.name for n in view.nodes)
    rows = []
    for cluster in sorted(set(by_cluster) | set(clusters) | set(nodes_in)):
        spec = clusters.get(cluster) or {}
        prices = spec.get("gpuPrices") or {}
        types = []
        cost = 0.0
        unpriced = []
        for gpu_type, counts in sorted(by_cluster[cluster].items()):
            price = prices.get(gpu_type)
            if price is None and counts["allocated"]:
                unpriced.append(gpu_type)
            cost += (price or 0.0) * counts["allocated"]
            types.append(
                {
                    "type": gpu_type,
                    "price": price,
                    **{k: counts[k] for k in ("total", "allocated", "free", "unhealthy")},
                }
            )
        budget = spec.get("powerBudgetWatts")
        draw = round(sum(power.get(name, 0.0) for name in nodes_in[cluster]), 3)
        rows.append(
            {
                "name": cluster,
                "declared": cluster in clusters,
                "nodes": node_counts[cluster],
                "types": types,
                "cost": cost,
                "unpriced": unpriced,
                "power": draw,
                "budget": budget,
                "power_pct": min(100.0, 100.0 * draw / budget) if budget else None,
                **_power_status(statuses.get(cluster)),
            }
        )
    return rows


def _power_status(status: dict[str, Any] | None) -> dict[str, Any]:
    """The powercap controller's verdict, for a badge: PowerWithinBudget and the capped GPUs.

    The full Power card is on the Cluster's page (dashboard/power.py)."""
    status = status if isinstance(status, dict) else {}
    condition = get_condition(status, "PowerWithinBudget") or {}
    power = status.get("power") if isinstance(status.get("power"), dict) else {}
    capped = number(power.get("cappedGpus"))
    return {
        "power_ok": condition.get("status") == "True" if condition else None,
        "power_reason": str(condition.get("reason") or "")[:64],
        "power_capped": int(capped) if capped is not None else None,
    }


def _by_condition(kind: str) -> dict[str, int]:
    counts: Counter = Counter()
    for status in Resource.objects.filter(kind=kind).values_list("status", flat=True):
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        if kind == "TrainingJob" and conditions.get("Succeeded", {}).get("status") == "True":
            counts["Succeeded"] += 1
        elif conditions.get("Ready", {}).get("status") == "True":
            counts["Ready"] += 1
        elif conditions.get("Scheduled", {}).get("status") == "False":
            counts["Unschedulable"] += 1
        else:
            counts["Progressing"] += 1
    return dict(counts)


def _context() -> dict[str, Any]:
    clusters = _clusters()
    return {
        "clusters": clusters,
        "any_nodes": any(c["nodes"]["total"] for c in clusters),
        "deployments": _by_condition("Deployment"),
        "jobs": _by_condition("TrainingJob"),
        "events": list(Event.objects.order_by("-last_seen")[:12]),
        "total_cost": sum(c["cost"] for c in clusters),
    }


@needs("viewer")
def overview(request: HttpRequest) -> HttpResponse:
    return render(request, "dashboard/overview.html", _context())


@needs("viewer")
def overview_live(request: HttpRequest) -> HttpResponse:
    return render(request, "dashboard/overview_live.html", _context())


urlpatterns = [
    path("", overview, name="overview"),
    path("overview/live", overview_live, name="overview-live"),
]
