"""Workload logs: agents append chunks of their Workloads' output; operators read or follow.

``flotilla logs workload/NAME -f`` long-polls ``GET …/logs?follow=true&since=ID``
the same way a watch does, so no connection from the control plane to the
node is needed.
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.db.models import Sum
from django.http import HttpRequest

from controlplane import scopes, store
from controlplane.errors import Invalid, NotFound
from controlplane.http import endpoint, int_param, json_body
from controlplane.models import WorkloadLog

MAX_CHUNK = 64 * 1024
POLL_SECONDS = 0.3


def append(workload: str, text: str) -> WorkloadLog:
    chunk = WorkloadLog.objects.create(workload=workload, text=text, size=len(text.encode()))
    total = WorkloadLog.objects.filter(workload=workload).aggregate(total=Sum("size"))["total"] or 0
    if total > settings.FLOTILLA_LOG_BYTES:
        # Drop the oldest chunks until what is kept fits the budget.
        excess = total - settings.FLOTILLA_LOG_BYTES
        doomed = []
        for chunk_id, size in (
            WorkloadLog.objects.filter(workload=workload).order_by("id").values_list("id", "size")
        ):
            if excess <= 0:
                break
            doomed.append(chunk_id)
            excess -= size
        WorkloadLog.objects.filter(id__in=doomed).delete()
    return chunk


def read(workload: str, since: int, limit: int = 200) -> list[WorkloadLog]:
    return list(WorkloadLog.objects.filter(workload=workload, id__gt=since).order_by("id")[:limit])


@endpoint({"GET": "viewer", "POST": "agent"})
def logs_view(request: HttpRequest, name: str) -> dict[str, Any]:
    if request.method == "POST":
        workload = store.get("Workload", name)
        if not (
            scopes.is_node_token(request.principal) and scopes.owns(request.principal, "Workload", workload)
        ):
            if request.principal.role != "admin":
                raise scopes.deny(request.principal, f"write the logs of workload/{name}")
        body = json_body(request)
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str) or len(text) > MAX_CHUNK:
            raise Invalid(
                f'send {{"text": ...}} of at most {MAX_CHUNK} characters',
                [{"field": "text", "fix": "split the log into smaller chunks"}],
            )
        chunk = append(name, text)
        return {"id": chunk.id}
    since = int_param(request, "since", 0, 0, 2**62)
    follow = request.GET.get("follow", "").lower() in {"1", "true"}
    timeout = int_param(request, "timeoutSeconds", 25, 0, settings.FLOTILLA_WATCH_MAX_SECONDS)
    if since == 0 and not WorkloadLog.objects.filter(workload=name).exists():
        if store.find("Workload", name) is None:
            raise NotFound(f"workload/{name} not found and has no logs kept")
    deadline = time.monotonic() + timeout
    while True:
        chunks = read(name, since)
        if chunks or not follow or time.monotonic() >= deadline:
            break
        time.sleep(POLL_SECONDS)
    return {
        "workload": name,
        "chunks": [{"id": c.id, "text": c.text} for c in chunks],
        "next": chunks[-1].id if chunks else since,
    }
