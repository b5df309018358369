"""What the owner pages share (Deployments and Training jobs): condition badges and Workload rows.

One badge scheme for both: green when a condition holds (blue for Progressing: work under
way, not done), grey when it is unknown or over (Completed, Converged), red for a refused
placement, amber for any other condition that does not hold. The pages differ in what
they show, not in the colours: the Deployments list has a fixed pair of badges in a narrow
column (the reason alone), a job every condition it has (each named), and a Deployment is
stuck whenever its placement is refused, a job only while there is no room for it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from controlplane.conditions import get_condition
from controlplane.controllers.owners import replica_index
from controlplane.models import Resource

OVER = ("Completed", "Converged")  # reasons of a condition that no longer applies: nothing wrong


def condition_badge(
    item: dict[str, Any] | None, kind: str, *, named: bool = True, any_refusal: bool = False
) -> dict[str, Any]:
    """Condition ``item`` of type ``kind`` (None: the status lacks it) as a badge: ``css``,
    ``text``, ``title`` (its message) and the condition's own fields.

    ``named`` puts the type before the reason ("Scheduled: Unschedulable"); otherwise the
    reason stands alone ("Unschedulable", or "not Ready" without one). A refused placement is
    Scheduled=False with reason Unschedulable or, with ``any_refusal``, with any reason (a
    runtime that cannot run the plan refuses it too).
    """
    if item is None:
        return {"css": "", "text": f"{kind}: unknown", "title": ""}
    reason = item.get("reason") or ""
    if item.get("status") == "True":
        css, text = ("info" if kind == "Progressing" else "ok"), kind
    else:
        refused = kind == "Scheduled" and (any_refusal or reason == "Unschedulable")
        css = "bad" if refused else "" if reason in OVER else "warn"
        text = f"{kind}: {reason or 'False'}" if named else reason or f"not {kind}"
    return {"css": css, "text": text, "title": item.get("message") or "", **item}


def condition_badges(
    status: dict[str, Any], kinds: Sequence[str] | None = None, **how: bool
) -> list[dict[str, Any]]:
    """Badges for ``kinds`` in that order (one the status lacks shows as unknown), or for every
    condition the status has; ``how`` is :func:`condition_badge`'s ``named`` and ``any_refusal``."""
    if kinds is None:
        items = status.get("conditions") or []
        return [condition_badge(item, item.get("type", "?"), **how) for item in items]
    return [condition_badge(get_condition(status, kind), kind, **how) for kind in kinds]


def workloads_by_owner(owner_uids: Iterable[str]) -> dict[str, list[Resource]]:
    """Each owner's Workloads in replica order, for a page of owners in one query."""
    found: dict[str, list[Resource]] = defaultdict(list)
    rows = Resource.objects.filter(kind="Workload", owner_uid__in=list(owner_uids)).only(
        "name", "owner_uid", "node_name", "gpu_indices", "spec", "status", "labels"
    )
    for workload in sorted(rows, key=replica_index):
        found[workload.owner_uid].append(workload)
    return found


def workload_rows(workloads: Iterable[Resource]) -> list[dict[str, Any]]:
    """What an owner page shows of each Workload: where it runs, its phase and readiness, what
    it serves, and how a training run went (restarts, last exit, step)."""
    rows = []
    for workload in workloads:
        status = workload.status
        ready = get_condition(status, "Ready") or {}
        rows.append(
            {
                "name": workload.name,
                "node": workload.node_name,
                "gpus": [int(i) for i in workload.gpu_indices.split(",") if i],
                "role": workload.spec.get("role", ""),
                "phase": status.get("phase") or "Pending",
                "ready": ready.get("status") == "True",
                "reason": ready.get("reason") or "",
                "message": ready.get("message") or "",
                "endpoint": status.get("endpoint") or "",
                "restarts": status.get("restarts", 0),
                "exit_code": status.get("lastExitCode"),
                "last_log": status.get("lastLog") or [],
                "step": (status.get("progress") or {}).get("step"),
            }
        )
    return rows
