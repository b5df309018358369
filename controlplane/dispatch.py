"""What to reconcile after a write commits.

``store`` calls :func:`changed` from ``transaction.on_commit`` with the old and
new documents; this module decides which objects need a reconcile and enqueues
them, coalescing repeats: while an object is already queued, a second enqueue
is dropped (the queued reconcile will read the latest state anyway).

The reconcile task is sent by its registered name (``RECONCILE_TASK``, which
``controlplane.tasks`` declares its task under), not by importing the task:
the tasks import the controllers, the controllers write through ``store``, and
``store`` calls this module, so importing ``controlplane.tasks`` here closed a
circle through eleven modules. A name is all a Celery message carries anyway.
(Store listeners registered in the app config would also break it, but would
hide who reacts to a write behind configuration; one module that says what to
reconcile, and sends it by name, is easier to follow.)
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings

from controlplane import leases
from controlplane.celeryapp import app

log = logging.getLogger(__name__)
OWNER_KINDS = ("Deployment", "TrainingJob")
# A queued flag that was never consumed (lost message) lapses after this; the
# periodic resync covers the gap.
QUEUED_TTL = 120.0
# The name ``controlplane.tasks.reconcile`` is registered under (it names itself with this).
RECONCILE_TASK = "controlplane.tasks.reconcile"


def enqueue(kind: str, name: str, countdown: float = 0) -> bool:
    if leases.acquire(f"queued:{kind}/{name}", QUEUED_TTL) is None:
        return False
    try:
        app.send_task(RECONCILE_TASK, args=[kind, name], countdown=countdown or None)
    except Exception:
        # The broker is down: the resync will pick the object up; do not fail the write.
        leases.release(f"queued:{kind}/{name}")
        log.exception("could not enqueue reconcile of %s/%s", kind, name)
        return False
    return True


def _meta(document: dict[str, Any] | None, field: str) -> Any:
    return (document or {}).get("metadata", {}).get(field)


def _ready(document: dict[str, Any] | None) -> bool:
    for condition in (document or {}).get("status", {}).get("conditions", []):
        if condition.get("type") == "Ready":
            return condition.get("status") == "True"
    return False


def changed(kind: str, name: str, old: dict | None, new: dict | None) -> None:
    if getattr(settings, "FLOTILLA_DISPATCH_DISABLED", False):
        return
    if kind in OWNER_KINDS:
        spec_changed = _meta(old, "generation") != _meta(new, "generation")
        deleting = new is not None and _meta(new, "deletionTimestamp") is not None
        if new is not None and (spec_changed or deleting):
            enqueue(kind, name)
    elif kind == "Workload":
        status_changed = old is not None and new is not None and old["status"] != new["status"]
        document = new or old or {}
        owner = document.get("spec", {}).get("owner", {})
        if (new is None or status_changed) and owner.get("kind") in OWNER_KINDS:
            enqueue(owner["kind"], owner["name"])
        if new is None or old is None:
            enqueue_clusters(document.get("spec", {}).get("nodeName"))
        if new is None:
            enqueue_pending()
    elif kind == "Node":
        became_unusable = old is not None and (new is None or (_ready(old) and not _ready(new)))
        if became_unusable:
            enqueue_owners_on_node(name)
        enqueue_clusters(name)
        if new is not None and (old is None or old["spec"] != new["spec"] or _ready(new)):
            enqueue_pending()
    elif kind == "Policy":
        # New parameters may let an unschedulable owner fit now.
        if new is not None and _meta(old, "generation") != _meta(new, "generation"):
            enqueue_pending()
    elif kind == "Cluster":
        if new is not None and _meta(old, "generation") != _meta(new, "generation"):
            enqueue("Cluster", name)
            enqueue_pending()


def enqueue_clusters(node_name: str | None) -> None:
    from controlplane.models import Resource

    clusters = set(Resource.objects.filter(kind="Cluster").values_list("name", flat=True))
    if node_name:
        node = Resource.objects.filter(kind="Node", name=node_name).first()
        if node is not None and node.cluster:
            clusters &= {node.cluster}
    for cluster in clusters:
        enqueue("Cluster", cluster, countdown=1)


def enqueue_owners_on_node(node_name: str) -> None:
    from controlplane.models import Resource

    for spec in Resource.objects.filter(kind="Workload", node_name=node_name).values_list("spec", flat=True):
        owner = spec.get("owner", {})
        if owner.get("kind") in OWNER_KINDS:
            enqueue(owner["kind"], owner["name"])


def enqueue_pending() -> None:
    """Capacity appeared: retry every owner that is not fully scheduled."""
    from controlplane.conditions import is_true
    from controlplane.models import Resource

    for kind, name, status in Resource.objects.filter(kind__in=OWNER_KINDS).values_list(
        "kind", "name", "status"
    ):
        if not is_true(status, "Scheduled"):
            enqueue(kind, name)
