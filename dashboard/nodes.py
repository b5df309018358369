"""The Nodes pages: a live grid of every node's GPUs, a page per node, and the operator's
actions on a node (cordon, uncordon, drain, labels).

The grid must stay cheap at a thousand nodes of eight GPUs each, polled every 5 s
by every open tab: it reads one light row per node (name and conditions) to filter
and count, then the whole rows, Workloads and telemetry of the page's nodes only.
That is a fixed number of queries however many nodes there are.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import path
from django.utils.safestring import SafeString
from django.views.decorators.http import require_POST
from pydantic import ValidationError

from common.specs import NodeSpec
from common.timeutil import now, parse_rfc3339
from controlplane import events, store
from controlplane.conditions import get_condition, is_true
from controlplane.controllers.nodes import last_heartbeat
from controlplane.drain import cordon, drain_node
from controlplane.errors import NotFound
from controlplane.models import Event, Resource
from controlplane.telemetry import store as telemetry
from dashboard.charts import Series, line_chart
from dashboard.common import actor, number, page_of, pct, querystring
from dashboard.roles import needs

STATES = {"ready": "Ready", "notready": "Not ready", "cordoned": "Cordoned"}
NO_CLUSTER = "-"  # the cluster filter's value for nodes in no cluster
GRID_PARAMS = ("cluster", "state", "q", "page")  # what the polled partial carries over from the page
SEARCH_MAX = 63  # a node name is at most 63 characters; a longer search matches nothing anyway
STALE_SECONDS = 60  # telemetry older than this is flagged on the card
CHART_WINDOW = timedelta(hours=1)
LIMIT_COLOR = "#94a3b8"
# The labels form: NodeSpec allows 64 labels of a 317-character key and 63-character
# value; the text is capped before it is parsed so a huge post costs nothing.
MAX_LABELS = 64
MAX_LABEL_TEXT = 64 * (317 + 63 + 2)
MAX_SHOWN_LINE = 80


# --- reading the grid -------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    cluster: str
    state: str
    q: str

    @property
    def active(self) -> bool:
        return bool(self.cluster or self.state or self.q)


def _filters(request: HttpRequest) -> Filters:
    """The grid's filters from the query string; unknown values are ignored, not errors."""
    state = request.GET.get("state", "")
    return Filters(
        cluster=request.GET.get("cluster", "")[:SEARCH_MAX],
        state=state if state in STATES else "",
        q=request.GET.get("q", "").strip()[:SEARCH_MAX],
    )


def _is_ready(conditions: Any, deleting: datetime | None) -> bool:
    """Ready as the scheduler judges it: a True Ready condition and not being deleted."""
    if deleting is not None or not isinstance(conditions, list):
        return False
    return any(
        isinstance(c, dict) and c.get("type") == "Ready" and c.get("status") == "True" for c in conditions
    )


def _matching_names(filters: Filters) -> tuple[list[str], dict[str, int]]:
    """Names of the nodes the filters select, in name order, and counts for the summary.

    One query of small values: JSON key transforms read just the conditions and the
    cordon flag, not each node's device list.
    """
    queryset = Resource.objects.filter(kind="Node").order_by("name")
    if filters.cluster == NO_CLUSTER:
        queryset = queryset.filter(cluster="")
    elif filters.cluster:
        queryset = queryset.filter(cluster=filters.cluster)
    if filters.q:
        queryset = queryset.filter(name__icontains=filters.q)
    rows = queryset.values_list("name", "status__conditions", "spec__unschedulable", "deletion_timestamp")
    names: list[str] = []
    counts = {"total": 0, "ready": 0, "cordoned": 0}
    for name, conditions, unschedulable, deleting in rows:
        ready, cordoned = _is_ready(conditions, deleting), bool(unschedulable)
        counts["total"] += 1
        counts["ready"] += ready
        counts["cordoned"] += cordoned
        wanted = {"ready": ready, "notready": not ready, "cordoned": cordoned}.get(filters.state, True)
        if wanted:
            names.append(name)
    return names, counts


def _workloads_on(names: list[str]) -> dict[tuple[str, int], dict[str, str]]:
    """(node, gpu index) -> the Workload bound there and its owner, for these nodes only."""
    rows = Resource.objects.filter(kind="Workload", node_name__in=names).values_list(
        "name", "node_name", "gpu_indices", "owner_ref", "deletion_timestamp"
    )
    taken: dict[tuple[str, int], dict[str, str]] = {}
    for name, node, indices, owner, deleting in rows:
        for index in filter(None, indices.split(",")):
            taken[(node, int(index))] = {"workload": name, "owner": owner, "deleting": deleting is not None}
    return taken


def _gpu(
    node: str,
    device: dict[str, Any],
    reading: dict[str, Any],
    taken: dict[tuple[str, int], dict[str, str]],
) -> dict[str, Any]:
    """One GPU cell: what the agent reported about the device, its latest reading, its Workload."""
    index = int(device["index"])
    memory_mib = number(device.get("memoryMiB"))
    used_mib = number(reading.get("memoryUsedMiB"))
    power = number(reading.get("powerW"))
    limit = number(reading.get("powerLimitW")) or number(device.get("powerLimitW"))
    utilization = number(reading.get("utilization"))
    bound = taken.get((node, index))
    return {
        "index": index,
        "key": f"{node}/{index}",
        "type": str(device.get("type", "unknown")),
        "name": str(device.get("name", "")),
        "healthy": bool(device.get("healthy", True)),
        "utilization": utilization,
        "util_pct": pct(utilization, 100.0),
        "mem_used_gib": None if used_mib is None else used_mib / 1024,
        "mem_total_gib": None if memory_mib is None else memory_mib / 1024,
        "mem_pct": pct(used_mib, memory_mib),
        "power": power,
        "power_limit": limit,
        "power_pct": pct(power, limit),
        "temperature": number(reading.get("temperatureC")),
        "workload": bound["workload"] if bound else None,
        "owner": bound["owner"] if bound else None,
        "evicting": bool(bound and bound["deleting"]),
    }


def _devices(status: dict[str, Any]) -> list[dict[str, Any]]:
    """The reported devices that have an index, in index order (a bad one is skipped, not fatal)."""
    found = []
    for device in status.get("devices") or []:
        if isinstance(device, dict) and isinstance(device.get("index"), int):
            found.append(device)
    return sorted(found, key=lambda d: d["index"])


def _card(
    name: str,
    spec: dict[str, Any],
    status: dict[str, Any],
    deleting: datetime | None,
    sample: dict[str, Any] | None,
    taken: dict[tuple[str, int], dict[str, str]],
) -> dict[str, Any]:
    """Everything the grid and the node page show about one node."""
    readings = {d.get("index"): d for d in (sample or {}).get("devices") or [] if isinstance(d, dict)}
    gpus = [_gpu(name, device, readings.get(device["index"], {}), taken) for device in _devices(status)]
    ready = get_condition(status, "Ready") or {}
    age = sample["ageSeconds"] if sample else None
    return {
        "name": name,
        "cluster": spec.get("cluster") or "",
        "ready": _is_ready(status.get("conditions"), deleting),
        "ready_reason": ready.get("reason") or ("" if ready else "no Ready condition yet"),
        "cordoned": bool(spec.get("unschedulable", False)),
        "deleting": deleting is not None,
        "gpus": gpus,
        "busy": sum(1 for g in gpus if g["workload"]),
        "power": sample["powerW"] if sample else None,
        "telemetry_age": age,
        "telemetry_stale": age is not None and age > STALE_SECONDS,
    }


def _cards(names: list[str]) -> list[dict[str, Any]]:
    """Cards for these nodes (one page): three queries plus telemetry's one per 200 nodes."""
    if not names:
        return []
    rows = Resource.objects.filter(kind="Node", name__in=names).values_list(
        "name", "spec", "status", "deletion_timestamp"
    )
    by_name = {row[0]: row for row in rows}
    taken = _workloads_on(names)
    samples = telemetry.latest_many(names)
    cards = []
    for name in names:
        if name in by_name:  # deleted between the two reads: left out rather than shown empty
            _, spec, status, deleting = by_name[name]
            cards.append(_card(name, spec, status, deleting, samples.get(name), taken))
    return cards


def _clusters() -> list[str]:
    return list(
        Resource.objects.filter(kind="Node")
        .exclude(cluster="")
        .order_by("cluster")
        .values_list("cluster", flat=True)
        .distinct()
    )


def _grid_context(request: HttpRequest) -> dict[str, Any]:
    filters = _filters(request)
    names, counts = _matching_names(filters)
    page = page_of(request, names)
    any_nodes = counts["total"] > 0 or (filters.active and Resource.objects.filter(kind="Node").exists())
    return {
        "filters": filters,
        "states": STATES,
        "no_cluster": NO_CLUSTER,
        "page": page,
        "cards": _cards(list(page.object_list)),
        "counts": counts,
        "matched": len(names),
        "any_nodes": any_nodes,
        "pager_query": querystring(request, page=None),
        "live_query": urlencode({k: request.GET[k] for k in GRID_PARAMS if request.GET.get(k)}),
    }


@needs("viewer")
def index(request: HttpRequest) -> HttpResponse:
    context = _grid_context(request)
    context["clusters"] = _clusters()
    return render(request, "dashboard/nodes.html", context)


@needs("viewer")
def live(request: HttpRequest) -> HttpResponse:
    """The grid alone, polled by the page every 5 s with the page's own filters and page number."""
    return render(request, "dashboard/nodes_live.html", _grid_context(request))


# --- one node ---------------------------------------------------------------------------


def _node_workloads(name: str) -> list[dict[str, Any]]:
    rows = (
        Resource.objects.filter(kind="Workload", node_name=name)
        .order_by("name")
        .values_list("name", "gpu_indices", "owner_ref", "status", "deletion_timestamp")
    )
    return [
        {
            "name": workload,
            "gpus": gpus.replace(",", ", "),
            "owner": owner,
            "phase": status.get("phase") or "",
            "ready": is_true(status, "Ready"),
            "deleting": deleting is not None,
        }
        for workload, gpus, owner, status, deleting in rows
    ]


def _series_points(samples: list[dict[str, Any]]) -> dict[int, dict[str, list[tuple[datetime, Any]]]]:
    """Telemetry items regrouped as GPU index -> metric -> [(time, value)], for charting."""
    points: dict[int, dict[str, list[tuple[datetime, Any]]]] = {}
    for item in samples:
        at = parse_rfc3339(item.get("at"))
        if at is None:
            continue
        for device in item.get("devices") or []:
            metrics = points.setdefault(device["index"], {})
            for key in ("utilization", "memoryUsedMiB", "powerW", "powerLimitW", "temperatureC"):
                metrics.setdefault(key, []).append((at, number(device.get(key))))
    return points


def _gpu_series(points: dict[int, dict[str, list]], key: str, scale: float = 1.0) -> list[Series]:
    return [
        Series(f"GPU {index}", [(at, None if v is None else v / scale) for at, v in metrics.get(key, [])])
        for index, metrics in sorted(points.items())
    ]


def _limit_series(points: dict[int, dict[str, list]]) -> Series:
    """The highest power limit of any GPU at each moment: one reference line, not eight."""
    limits: dict[datetime, float] = {}
    for metrics in points.values():
        for at, value in metrics.get("powerLimitW", []):
            if value is not None:
                limits[at] = max(value, limits.get(at, value))
    return Series("limit", sorted(limits.items()), color=LIMIT_COLOR)


def _charts(name: str, devices: list[dict[str, Any]]) -> list[SafeString]:
    """The last hour of this node's telemetry as four charts, one line per GPU; [] without data."""
    samples = telemetry.series(name, since=now() - CHART_WINDOW, resolution="minute")
    points = _series_points(samples)
    values = (v for metrics in points.values() for series in metrics.values() for _, v in series)
    if all(v is None for v in values):
        return []
    memory = [number(d.get("memoryMiB")) for d in devices]
    memory_max = max((m for m in memory if m), default=None)
    power = _gpu_series(points, "powerW")
    limit = _limit_series(points)
    return [
        line_chart(_gpu_series(points, "utilization"), title="Utilisation", unit="%", y_max=100),
        line_chart([*power, limit] if limit.points else power, title="Power vs limit", unit="W"),
        line_chart(
            _gpu_series(points, "memoryUsedMiB", 1024),
            title="Memory used",
            unit="GiB",
            y_max=memory_max / 1024 if memory_max else None,
        ),
        line_chart(_gpu_series(points, "temperatureC"), title="Temperature", unit="°C"),
    ]


def _heartbeat(name: str) -> dict[str, Any] | None:
    stamp = last_heartbeat(name)
    moment = parse_rfc3339(stamp)
    return None if moment is None else {"at": stamp, "moment": moment}


def _labels_text(labels: dict[str, str]) -> str:
    return "\n".join(f"{key}={value}" for key, value in sorted(labels.items()))


def _node_context(node: Resource) -> dict[str, Any]:
    sample = telemetry.latest(node.name)
    taken = _workloads_on([node.name])
    card = _card(node.name, node.spec, node.status, node.deletion_timestamp, sample, taken)
    devices = _devices(node.status)
    spec_labels = node.spec.get("labels") or {}
    return {
        "node": node,
        "card": card,
        "devices": devices,
        "conditions": node.status.get("conditions") or [],
        "node_info": node.status.get("nodeInfo") or {},
        "spec_labels": spec_labels,
        "labels_text": _labels_text(spec_labels),
        "label_error": None,
        "max_label_text": MAX_LABEL_TEXT,
        "heartbeat": _heartbeat(node.name),
        "workloads": _node_workloads(node.name),
        "charts": _charts(node.name, devices),
        "events": list(Event.objects.filter(kind="Node", name=node.name).order_by("-last_seen")[:20]),
    }


def _missing(request: HttpRequest, name: str) -> HttpResponse:
    return render(request, "dashboard/node_missing.html", {"name": name[:SEARCH_MAX]}, status=404)


@needs("viewer")
def detail(request: HttpRequest, name: str) -> HttpResponse:
    node = store.find("Node", name)
    if node is None:
        return _missing(request, name)
    return render(request, "dashboard/node.html", _node_context(node))


# --- actions (operators, POST only) -----------------------------------------------------


def _cordon(request: HttpRequest, name: str, unschedulable: bool) -> HttpResponse:
    try:
        changed = cordon(name, actor(request), unschedulable)
    except NotFound:
        return _missing(request, name)
    done = "cordoned: no new Workloads will be placed on it" if unschedulable else "uncordoned"
    already = "was already cordoned" if unschedulable else "was not cordoned"
    messages.success(request, f"node {name} {done if changed else already}")
    return redirect("node", name=name)


@needs("operator")
@require_POST
def cordon_view(request: HttpRequest, name: str) -> HttpResponse:
    return _cordon(request, name, True)


@needs("operator")
@require_POST
def uncordon_view(request: HttpRequest, name: str) -> HttpResponse:
    return _cordon(request, name, False)


@needs("operator")
@require_POST
def drain_view(request: HttpRequest, name: str) -> HttpResponse:
    try:
        evicted = drain_node(name, actor(request))
    except NotFound:
        return _missing(request, name)
    messages.success(
        request,
        f"node {name} drained: cordoned and {evicted} workloads evicted; "
        "their Deployments and TrainingJobs place replacements on other nodes",
    )
    return redirect("node", name=name)


class LabelError(ValueError):
    """A labels form that cannot be saved; the message names the bad line or label and the fix."""


def _shown(line: str) -> str:
    return repr(line if len(line) <= MAX_SHOWN_LINE else line[:MAX_SHOWN_LINE] + "…")


def parse_labels(text: str) -> dict[str, str]:
    """``key=value`` per line (blank lines and ``#`` comments skipped) -> labels.

    Only the shape is checked here; the keys and values are checked by NodeSpec
    itself (see :func:`_validated`), so the dashboard cannot drift from the API.
    """
    if len(text) > MAX_LABEL_TEXT:
        raise LabelError(f"the labels are {len(text)} characters; at most {MAX_LABEL_TEXT} are accepted")
    labels: dict[str, str] = {}
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)]
    lines = [(n, line) for n, line in lines if line and not line.startswith("#")]
    if len(lines) > MAX_LABELS:
        raise LabelError(f"{len(lines)} labels given; at most {MAX_LABELS} are allowed: remove some lines")
    for line_no, line in lines:
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise LabelError(
                f"line {line_no}: {_shown(line)} is not key=value; write one label per line, e.g. team=search"
            )
        if key in labels:
            raise LabelError(f"line {line_no}: label {key!r} is given twice; keep one line for it")
        labels[key] = value
    return labels


def _validated(spec: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    """The node's spec with these labels, checked by the same model the API applies."""
    new_spec = {**spec, "labels": labels}
    try:
        NodeSpec.model_validate(new_spec)
    except ValidationError as exc:
        problems = "; ".join(str(err["msg"]).removeprefix("Value error, ") for err in exc.errors())
        raise LabelError(problems) from None
    return new_spec


def _save_labels(request: HttpRequest, node: Resource, text: str) -> None:
    """Replace the node's spec.labels; raises LabelError and writes nothing on bad input."""
    expected = request.POST.get("generation", "")
    if expected and expected != str(node.generation):
        raise LabelError(
            f"node {node.name} was changed since you opened this page (generation {node.generation}, "
            f"the form had {expected[:20]}); reload the page and edit the labels again"
        )
    new_spec = _validated(node.spec, parse_labels(text))
    if store.update(node, spec=new_spec):
        labels = new_spec["labels"]
        summary = ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "(none)"
        events.audit(actor(request), "label", "Node", node.name, f"spec.labels: {summary}")


@needs("operator")
@require_POST
def labels_view(request: HttpRequest, name: str) -> HttpResponse:
    text = request.POST.get("labels", "")
    with transaction.atomic():
        store.lock_writes()  # before the row lock, as everywhere (see store.lock_writes)
        node = Resource.objects.select_for_update().filter(kind="Node", name=name).first()
        if node is None:
            return _missing(request, name)
        try:
            _save_labels(request, node, text)
        except LabelError as exc:
            error = str(exc)
        else:
            messages.success(request, f"labels of node {name} saved")
            return redirect("node", name=name)
    context = _node_context(node)
    context.update(label_error=error, labels_text=text[:MAX_LABEL_TEXT])
    return render(request, "dashboard/node.html", context, status=400)


urlpatterns = [
    path("nodes/", index, name="nodes"),
    path("nodes/live", live, name="nodes-live"),
    path("nodes/<str:name>/", detail, name="node"),
    path("nodes/<str:name>/cordon", cordon_view, name="node-cordon"),
    path("nodes/<str:name>/uncordon", uncordon_view, name="node-uncordon"),
    path("nodes/<str:name>/drain", drain_view, name="node-drain"),
    path("nodes/<str:name>/labels", labels_view, name="node-labels"),
]
