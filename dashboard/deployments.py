"""Deployments: the list, one Deployment's page, and the operator's actions on it.

The list shows, per Deployment, replicas ready/desired, where its Workloads run,
its SLO targets against the latency its replicas last reported (``dashboard.serving``),
its URL (``status.url``: its router's, or its one replica's), its endpoints and its
conditions (``dashboard.owners``, shared with the Training jobs pages). A page of 50
costs the same handful of queries whatever the fleet's size: one for the page, one for
all of its Workloads, one for the newest telemetry of their nodes. A sized Deployment's
page also shows its scheduler's plan (status.plan), with every estimate marked as one,
and every Deployment's page its prefix-cache hit rate. The router is listed with the
Workloads and the placement, but its numbers are kept out of the replicas' latency,
charts and prefix-cache figures.

Every write (scale, edit, delete) goes through ``controlplane.apply`` or
``controlplane.api.delete``, the code behind the REST API, so validation,
generation bumps and the audit log are the same whichever door an operator uses.
"""

from __future__ import annotations

from typing import Any

import yaml
from django.contrib import messages
from django.core.paginator import Page
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import path
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from common.specs import KINDS
from controlplane import api, store
from controlplane import apply as applier
from controlplane.conditions import is_true
from controlplane.errors import ApiError, Invalid
from controlplane.models import Event, Resource
from controlplane.telemetry import store as telemetry
from dashboard.applypage import parse_text, plan_rows, problem_view
from dashboard.common import actor, page_of, querystring
from dashboard.owners import condition_badges, workload_rows, workloads_by_owner
from dashboard.plans import plan_view
from dashboard.roles import needs
from dashboard.serving import charts, measured, prefix_cache_figures, slo_lines

KIND = "Deployment"
STATES = ("Ready", "Progressing", "Unschedulable", "Deleting")
EVENTS_SHOWN = 20

# --- reading ----------------------------------------------------------------------------


def _get(name: str) -> Resource:
    resource = store.find(KIND, name)
    if resource is None:
        raise Http404(f"deployment/{name} not found")
    return resource


def state_of(resource: Resource) -> str:
    """The one word the condition filter matches: Deleting, Unschedulable, Ready or Progressing."""
    if resource.deletion_timestamp is not None:
        return "Deleting"
    return _state(resource.status)


def _state(status: dict[str, Any]) -> str:
    for item in status.get("conditions") or []:
        if item.get("type") == "Scheduled" and item.get("status") == "False":
            return "Unschedulable"
    return "Ready" if is_true(status, "Ready") else "Progressing"


def _badges(resource: Resource) -> list[dict[str, Any]]:
    """Scheduled and Ready, reason alone; a refused placement is bad, not merely pending."""
    deleting = [{"css": "bad", "text": "Deleting"}] if resource.deletion_timestamp is not None else []
    return deleting + condition_badges(resource.status, ("Scheduled", "Ready"), named=False, any_refusal=True)


def placement(workloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Workloads grouped by (node, role): "gpu-a · GPUs 0,1 · serve ×2" reads faster than a list."""
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for w in workloads:
        group = groups.setdefault((w["node"], w["role"]), {"node": w["node"], "role": w["role"], "gpus": []})
        group["gpus"].extend(w["gpus"])
        group["count"] = group.get("count", 0) + 1
    return [
        {**g, "gpus": ",".join(str(i) for i in sorted(g["gpus"])), "gpu_count": len(g["gpus"])}
        for g in groups.values()
    ]


def _link(url: str) -> dict[str, Any]:
    """A URL to show; only http(s) ones become links."""
    return {"url": url, "link": url.startswith(("http://", "https://"))}


def endpoints(status: dict[str, Any]) -> list[dict[str, Any]]:
    """status.endpoints: each Ready replica's own."""
    return [_link(url) for url in status.get("endpoints") or [] if isinstance(url, str)]


def url_of(status: dict[str, Any]) -> dict[str, Any] | None:
    """status.url, where clients go, or None while nothing serves."""
    url = status.get("url")
    return _link(url) if isinstance(url, str) and url else None


def replicas_of(workloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Workload rows that are replicas: the router's numbers are not a replica's."""
    return [w for w in workloads if w["role"] != "router"]


def rows_for(resources: list[Resource]) -> list[dict[str, Any]]:
    """Table rows for a page of Deployments: two queries however many there are."""
    workloads = {
        uid: workload_rows(owned) for uid, owned in workloads_by_owner(str(r.uid) for r in resources).items()
    }
    nodes = {w["node"] for ws in workloads.values() for w in ws}
    latest = telemetry.latest_many(nodes) if nodes else {}
    rows = []
    for resource in resources:
        mine = workloads.get(str(resource.uid), [])
        serving = replicas_of(mine)
        replicas = resource.status.get("replicas") or {}
        rows.append(
            {
                "name": resource.name,
                "model": (resource.spec.get("model") or {}).get("source", ""),
                "desired": resource.spec.get("replicas", 1),
                "ready": replicas.get("ready", 0),
                "scheduled": replicas.get("scheduled", len(mine)),
                "state": state_of(resource),
                "badges": _badges(resource),
                "placement": placement(mine),
                "slo": slo_lines(resource.spec, measured(serving, latest)),
                "url": url_of(resource.status),
                "endpoints": endpoints(resource.status),
                "prefix_cache": prefix_cache_figures(serving, latest),
                "workloads": mine,
            }
        )
    return rows


def _page(request: HttpRequest, name: str, state: str) -> tuple[Page, list[Resource]]:
    """The requested page of Deployments, filtered; conditions live in JSON, so that filter
    runs over (id, status) pairs and only the page's rows are loaded whole."""
    base = Resource.objects.filter(kind=KIND)
    if name:
        base = base.filter(name__icontains=name)
    if state not in STATES:
        page = page_of(request, base.order_by("name"))
        return page, list(page.object_list)
    pairs = base.order_by("name").values_list("id", "status", "deletion_timestamp")
    ids = [
        pk for pk, status, deleting in pairs if ("Deleting" if deleting else _state(status or {})) == state
    ]
    page = page_of(request, ids)
    return page, list(Resource.objects.filter(id__in=list(page.object_list)).order_by("name"))


def _list_context(request: HttpRequest) -> dict[str, Any]:
    name = request.GET.get("name", "").strip()
    state = request.GET.get("condition", "")
    page, resources = _page(request, name, state)
    return {
        "rows": rows_for(resources),
        "page": page,
        "pager_query": querystring(request, page=None),
        "live_query": request.GET.urlencode(),
        "name": name,
        "condition": state if state in STATES else "",
        "states": STATES,
        "any_deployments": bool(resources) or Resource.objects.filter(kind=KIND).exists(),
    }


# --- one Deployment ---------------------------------------------------------------------


def editable_yaml(resource: Resource) -> str:
    """The object as an operator would apply it, with resourceVersion so a stale save is refused."""
    metadata: dict[str, Any] = {"name": resource.name, "resourceVersion": str(resource.resource_version)}
    if resource.labels:
        metadata["labels"] = resource.labels
    if resource.annotations:
        metadata["annotations"] = resource.annotations
    document = {"apiVersion": "flotilla.dev/v1", "kind": KIND, "metadata": metadata, "spec": resource.spec}
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False)


def _events(name: str) -> list[Event]:
    return list(Event.objects.filter(kind=KIND, name=name).order_by("-last_seen")[:EVENTS_SHOWN])


def _status_context(resource: Resource) -> dict[str, Any]:
    (row,) = rows_for([resource])
    return {
        "d": resource,
        "row": row,
        "conditions": resource.status.get("conditions") or [],
        "observed": resource.status.get("observedGeneration"),
        "plan": plan_view(resource),
    }


def _detail_context(resource: Resource) -> dict[str, Any]:
    context = _status_context(resource)
    context.update(
        spec_yaml=editable_yaml(resource),
        events=_events(resource.name),
        charts=charts(replicas_of(context["row"]["workloads"])),
    )
    return context


# --- views: reading ---------------------------------------------------------------------


@needs("viewer")
@require_safe
def deployments(request: HttpRequest) -> HttpResponse:
    return render(request, "dashboard/deployments.html", _list_context(request))


@needs("viewer")
@require_safe
def deployments_live(request: HttpRequest) -> HttpResponse:
    return render(request, "dashboard/deployment_list.html", _list_context(request))


@needs("viewer")
@require_safe
def deployment(request: HttpRequest, name: str) -> HttpResponse:
    return render(request, "dashboard/deployment.html", _detail_context(_get(name)))


@needs("viewer")
@require_safe
def deployment_live(request: HttpRequest, name: str) -> HttpResponse:
    """The status block; once the Deployment is gone, htmx's 286 stops the polling."""
    resource = store.find(KIND, name)
    if resource is None:
        return render(request, "dashboard/deployment_gone.html", {"name": name}, status=286)
    return render(request, "dashboard/deployment_status.html", _status_context(resource))


# --- views: actions -----------------------------------------------------------------------


def _error_text(exc: ApiError) -> str:
    """One line for a message: each problem's field, what is wrong and its fix."""
    details = problem_view(exc)["details"]
    if not details:
        return exc.message
    return "; ".join(
        f"{d['field'] or 'input'}: {d['message'] or exc.message} — fix: {d['fix']}" for d in details
    )


@needs("operator")
@require_POST
def scale(request: HttpRequest, name: str) -> HttpResponse:
    """Set spec.replicas through the API's replace path: validated, generation bumped, audited."""
    resource = _get(name)
    document = store.to_document(resource)
    document.pop("status", None)
    # The raw text goes to the spec model, so "abc" or -1 get the API's own field-level message.
    document["spec"] = {**resource.spec, "replicas": request.POST.get("replicas", "").strip()}
    try:
        outcome = applier.replace(document, KIND, name, actor(request))
    except ApiError as exc:
        messages.error(request, f"Not scaled: {_error_text(exc)}")
        return redirect("deployment", name=name)
    replicas = store.get(KIND, name).spec.get("replicas")
    if outcome.action == "unchanged":
        messages.info(request, f"deployment/{name} already has {replicas} replicas")
    else:
        generation = outcome.generation
        messages.success(
            request, f"deployment/{name} scaled to {replicas} replicas (generation {generation})"
        )
    return redirect("deployment", name=name)


def _one_document(text: str, name: str) -> Any:
    """The editor's single document; it must still be this Deployment (other objects: Apply page)."""
    documents = parse_text(text)
    if len(documents) != 1:
        raise Invalid(
            f"the editor holds {len(documents)} documents; it edits deployment/{name} only",
            [{"document": 1, "field": "", "fix": "keep one document; apply others on the Apply page"}],
        )
    document = documents[0]
    if not isinstance(document, dict) or not isinstance(document.get("metadata"), dict):
        return document  # validation explains what is missing
    if document.get("kind") != KIND:
        raise Invalid(
            f"kind is {document.get('kind')!r}; this page edits deployment/{name}",
            [{"document": 0, "field": "kind", "fix": f"set kind: {KIND}, or use the Apply page"}],
        )
    given = document["metadata"].get("name")
    if given is not None and given != name:
        raise Invalid(
            f"metadata.name is {given!r}; a Deployment cannot be renamed",
            [
                {
                    "document": 0,
                    "field": "metadata.name",
                    "fix": f"keep name: {name}; for a new name apply a new Deployment and delete this one",
                }
            ],
        )
    return document


def _save(document: Any, name: str, who: str) -> applier.Outcome:
    """With metadata.resourceVersion (the editor's default) a concurrent change is refused;
    without it the document is applied like ``flotilla apply``."""
    metadata = document.get("metadata") if isinstance(document, dict) else None
    if isinstance(metadata, dict) and metadata.get("resourceVersion"):
        return applier.replace(document, KIND, name, who)
    (outcome,) = applier.apply([document], actor=who)
    return outcome


def _stale(document: Any, resource: Resource) -> bool:
    metadata = document.get("metadata") if isinstance(document, dict) else None
    version = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
    return version is not None and str(version) != str(resource.resource_version)


@needs("operator")
@require_http_methods(["GET", "POST"])
def edit(request: HttpRequest, name: str) -> HttpResponse:
    """GET shows the editor; POST ``action=preview`` dry-runs it, ``action=save`` writes the
    previewed text (carried in a hidden field). Any problem is shown and nothing is written."""
    resource = _get(name)
    context: dict[str, Any] = {"d": resource, "text": editable_yaml(resource)}
    status = 200
    if request.method == "POST":
        context["text"] = text = request.POST.get("yaml", "")
        try:
            document = _one_document(text, name)
            if request.POST.get("action") == "save":
                outcome = _save(document, name, actor(request))
                done = f"deployment/{name} {outcome.action} (generation {outcome.generation})"
                messages.success(request, done)
                return redirect("deployment", name=name)
            (outcome,) = applier.apply([document], actor=actor(request), dry_run=True)
            context.update(plan=plan_rows([outcome]), stale=_stale(document, resource))
        except ApiError as exc:
            context["error"] = problem_view(exc)
            status = exc.status
    return render(request, "dashboard/deployment_edit.html", context, status=status)


@needs("operator")
@require_POST
def delete(request: HttpRequest, name: str) -> HttpResponse:
    """Delete through the API's path (audited); the form must repeat the name as ``confirm``."""
    _get(name)
    if request.POST.get("confirm", "").strip() != name:
        messages.error(request, f"Not deleted: type the name {name} in the box to confirm.")
        return redirect("deployment", name=name)
    try:
        outcome = api.delete(KINDS[KIND], name, actor(request))
    except ApiError as exc:
        messages.error(request, f"Not deleted: {_error_text(exc)}")
        return redirect("deployment", name=name)
    if outcome.gone:
        messages.success(request, f"deployment/{name} deleted")
    else:
        messages.success(request, f"deployment/{name} is being deleted: its Workloads stop first")
    return redirect("deployments")


urlpatterns = [
    path("deployments/", deployments, name="deployments"),
    path("deployments/live", deployments_live, name="deployments-live"),
    path("deployments/<str:name>/", deployment, name="deployment"),
    path("deployments/<str:name>/live", deployment_live, name="deployment-live"),
    path("deployments/<str:name>/scale", scale, name="deployment-scale"),
    path("deployments/<str:name>/edit", edit, name="deployment-edit"),
    path("deployments/<str:name>/delete", delete, name="deployment-delete"),
]
