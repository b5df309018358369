"""The resource store: the one place that writes resources.

Every write takes the next global resourceVersion (under a row lock, so
versions follow commit order), records a ``Change`` for watchers and, once the
transaction commits, tells the dispatcher so reconciles are enqueued on commit
and never before.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from django.db import transaction
from django.db.models import F

from common.specs import API_VERSION, KINDS
from common.timeutil import now, rfc3339
from controlplane import dispatch
from controlplane.errors import Conflict, NotFound
from controlplane.models import Change, Counter, Resource

RV_COUNTER = "resource_version"


def next_version() -> int:
    """Allocate the next resourceVersion; holds the counter's row lock until commit."""
    updated = Counter.objects.filter(name=RV_COUNTER).update(value=F("value") + 1)
    if not updated:
        Counter.objects.create(name=RV_COUNTER, value=1)
        return 1
    return Counter.objects.filter(name=RV_COUNTER).values_list("value", flat=True).get()


def lock_writes() -> None:
    """Serialise this transaction with every other writer, before it locks anything else.

    Every write ends by bumping the counter, so holding the counter's row lock
    (PostgreSQL) until commit puts this transaction ahead of all other writers:
    a scheduler's read of free GPUs cannot race another scheduler's write. On
    SQLite, ``transaction_mode=IMMEDIATE`` already took the database write lock
    at BEGIN.

    Lock order matters: a transaction that locked a Resource row first and the
    counter second would deadlock with one that did the reverse (a controller
    reconciling a Deployment while the API deletes it). So the counter comes
    first everywhere: ``get(for_update=True)`` calls this before its row lock.
    Taking the lock reads the row and writes nothing, so no resourceVersion is
    spent on a transaction that ends up changing nothing.
    """
    locked = Counter.objects.select_for_update().filter(name=RV_COUNTER).values_list("value", flat=True)
    if locked.first() is None:
        next_version()  # first write ever: create the row (and hold it) instead


def to_document(resource: Resource) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": resource.name,
        "uid": str(resource.uid),
        "generation": resource.generation,
        "resourceVersion": str(resource.resource_version),
        "creationTimestamp": rfc3339(resource.created_at),
        "labels": resource.labels,
    }
    if resource.annotations:
        metadata["annotations"] = resource.annotations
    if resource.finalizers:
        metadata["finalizers"] = resource.finalizers
    if resource.owner_references:
        metadata["ownerReferences"] = resource.owner_references
    if resource.deletion_timestamp:
        metadata["deletionTimestamp"] = rfc3339(resource.deletion_timestamp)
    return {
        "apiVersion": API_VERSION,
        "kind": resource.kind,
        "metadata": metadata,
        "spec": resource.spec,
        "status": resource.status,
    }


def get(kind: str, name: str, for_update: bool = False) -> Resource:
    """The named object or NotFound; ``for_update`` locks it (after the writers' lock)."""
    queryset = Resource.objects.filter(kind=kind, name=name)
    if for_update:
        lock_writes()
        queryset = queryset.select_for_update()
    resource = queryset.first()
    if resource is None:
        plural = KINDS[kind].plural
        raise NotFound(
            f"{kind.lower()}/{name} not found",
            [{"field": "metadata.name", "fix": f"list what exists with GET /api/v1/{plural}"}],
        )
    return resource


def find(kind: str, name: str) -> Resource | None:
    return Resource.objects.filter(kind=kind, name=name).first()


def _denormalise(resource: Resource) -> None:
    spec = resource.spec
    resource.node_name = spec.get("nodeName") or "" if resource.kind == "Workload" else ""
    owner = spec.get("owner") if resource.kind == "Workload" else None
    resource.owner_uid = (owner or {}).get("uid") or ""
    resource.owner_ref = f"{owner.get('kind')}/{owner.get('name')}" if owner else ""
    gpus = spec.get("gpus", []) if resource.kind == "Workload" else []
    resource.gpu_indices = ",".join(str(index) for index in gpus)
    resource.cluster = spec.get("cluster") or ""


def _record(resource: Resource, change_type: str, old: dict[str, Any] | None) -> None:
    version = next_version()
    resource.resource_version = version
    if change_type != "DELETED":
        resource.save()
    document = to_document(resource)
    Change.objects.create(
        id=version,
        kind=resource.kind,
        name=resource.name,
        type=change_type,
        object=document,
        node_name=resource.node_name,
    )
    new = None if change_type == "DELETED" else document
    transaction.on_commit(lambda: dispatch.changed(resource.kind, resource.name, old, new))


def create(
    kind: str,
    name: str,
    spec: dict[str, Any],
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    owner_references: list[dict[str, Any]] | None = None,
    status: dict[str, Any] | None = None,
) -> Resource:
    info = KINDS[kind]
    resource = Resource(
        kind=kind,
        name=name,
        spec=spec,
        labels=labels or {},
        annotations=annotations or {},
        owner_references=owner_references or [],
        status=status or {},
        finalizers=[info.finalizer] if info.finalizer else [],
    )
    _denormalise(resource)
    _record(resource, "ADDED", None)
    return resource


def update(
    resource: Resource,
    *,
    spec: dict[str, Any] | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    expected_version: int | None = None,
) -> bool:
    """Write spec/metadata changes; bump generation only when the spec changed."""
    if expected_version is not None and expected_version != resource.resource_version:
        raise Conflict(
            f"{resource} was modified (resourceVersion is {resource.resource_version}, "
            f"you sent {expected_version})",
            [{"field": "metadata.resourceVersion", "fix": "get the object again and re-apply"}],
        )
    old = to_document(resource)
    changed = False
    if spec is not None and spec != resource.spec:
        resource.spec = spec
        resource.generation += 1
        changed = True
    if labels is not None and labels != resource.labels:
        resource.labels = labels
        changed = True
    if annotations is not None and annotations != resource.annotations:
        resource.annotations = annotations
        changed = True
    if changed:
        _denormalise(resource)
        _record(resource, "MODIFIED", old)
    return changed


def update_status(resource: Resource, status: dict[str, Any]) -> bool:
    """Replace status; a no-op (and no new resourceVersion) when nothing changed."""
    if status == resource.status:
        return False
    old = to_document(resource)
    resource.status = copy.deepcopy(status)
    _record(resource, "MODIFIED", old)
    return True


def set_finalizers(resource: Resource, finalizers: list[str]) -> bool:
    """Replace the finalizers; lifting the last one of an object being deleted deletes it.
    A no-op (no new resourceVersion) when nothing changes; True when it wrote."""
    if finalizers == resource.finalizers:
        return False
    old = to_document(resource)
    resource.finalizers = finalizers
    if resource.deletion_timestamp and not finalizers:
        _remove(resource, old)
    else:
        _record(resource, "MODIFIED", old)
    return True


def add_finalizer(resource: Resource, name: str) -> bool:
    """Hold ``resource`` with the finalizer ``name`` (kopf style: idempotent, nothing
    written when it is already there); True when it was added."""
    if name in resource.finalizers:
        return False
    return set_finalizers(resource, [*resource.finalizers, name])


def remove_finalizer(resource: Resource, name: str) -> bool:
    """Lift the finalizer ``name``; nothing written when it is not there. Lifting the
    last finalizer of an object being deleted deletes it. True when it was removed."""
    if name not in resource.finalizers:
        return False
    return set_finalizers(resource, [f for f in resource.finalizers if f != name])


def request_delete(resource: Resource) -> bool:
    """Delete now, or mark for deletion while finalizers remain; True when gone."""
    if not resource.finalizers:
        _remove(resource, to_document(resource))
        return True
    if resource.deletion_timestamp is None:
        old = to_document(resource)
        resource.deletion_timestamp = now()
        _record(resource, "MODIFIED", old)
    return False


def _remove(resource: Resource, old: dict[str, Any]) -> None:
    resource.deletion_timestamp = resource.deletion_timestamp or now()
    _record(resource, "DELETED", old)
    Resource.objects.filter(pk=resource.pk).delete()


def list_kind(kind: str, selector: dict[str, str] | None = None, **filters: Any) -> Iterable[Resource]:
    queryset = Resource.objects.filter(kind=kind, **filters).order_by("name")
    for resource in queryset.iterator(chunk_size=500):
        if selector and any(resource.labels.get(k) != v for k, v in selector.items()):
            continue
        yield resource
