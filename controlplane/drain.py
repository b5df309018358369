"""Cordon, uncordon and drain a node: the operator's way to take a node out of service.

Cordoning sets ``spec.unschedulable`` through the store, so the generation bumps,
watchers see the change and the dispatcher retries pending owners. Draining also
evicts every Workload bound to the node; deleting a Workload is what makes its
owner's controller place a replacement (the store's dispatch enqueues the owner on
commit), and the cordon, written in the same transaction, keeps the replacement
off this node. The dashboard calls these today and the API can call them later.
"""

from __future__ import annotations

from django.db import transaction

from controlplane import events, store
from controlplane.models import Resource

SOURCE = "node-drain"


def _set_unschedulable(node: Resource, value: bool) -> bool:
    """Write ``spec.unschedulable``; False when it already had that value."""
    if bool(node.spec.get("unschedulable", False)) == value:
        return False
    return store.update(node, spec={**node.spec, "unschedulable": value})


def cordon(name: str, actor: str, unschedulable: bool = True) -> bool:
    """Cordon (or, with ``unschedulable=False``, uncordon) a node; True when it changed.

    Raises ``controlplane.errors.NotFound`` for an unknown node. A no-op writes
    nothing, so clicking twice neither bumps the generation nor logs twice.
    """
    with transaction.atomic():
        node = store.get("Node", name, for_update=True)
        if not _set_unschedulable(node, unschedulable):
            return False
        verb = "cordon" if unschedulable else "uncordon"
        if unschedulable:
            events.record(node, "Cordoned", f"marked unschedulable by {actor}", source=SOURCE)
        else:
            events.record(node, "Uncordoned", f"marked schedulable again by {actor}", source=SOURCE)
        events.audit(actor, verb, "Node", name, f"spec.unschedulable={str(unschedulable).lower()}")
        return True


def _evict(workload: Resource, node_name: str, actor: str) -> None:
    """Delete one Workload (or mark it, while an agent's finalizer holds it) and say why."""
    store.request_delete(workload)
    owner = workload.spec.get("owner") or {}
    if owner.get("kind") and owner.get("name"):
        events.record(
            (owner["kind"], owner["name"]),
            "Evicted",
            f"workload/{workload.name} evicted: node/{node_name} is being drained; "
            "a replacement is placed on another node",
            type_="Warning",
            source=SOURCE,
        )
    events.audit(actor, "evict", "Workload", workload.name, f"drained from node/{node_name}")


def drain_node(name: str, actor: str) -> int:
    """Cordon the node and evict every Workload bound to it; returns how many were evicted.

    Runs under the store's write lock, like a scheduling pass, so no owner
    reconcile can place a Workload here between the cordon and the evictions.
    Raises ``controlplane.errors.NotFound`` for an unknown node.
    """
    with transaction.atomic():
        node = store.get("Node", name, for_update=True)  # takes the writers' lock first
        _set_unschedulable(node, True)
        workloads = list(Resource.objects.filter(kind="Workload", node_name=name).order_by("name"))
        for workload in workloads:
            _evict(workload, name, actor)
        named = ", ".join(w.name for w in workloads[:20]) + (" …" if len(workloads) > 20 else "")
        message = f"drained by {actor}: cordoned and evicted {len(workloads)} workloads"
        events.record(node, "Drained", message + (f" ({named})" if workloads else ""), source=SOURCE)
        events.audit(actor, "drain", "Node", name, f"evicted {len(workloads)} workloads: {named}")
        return len(workloads)
