"""Build the plain ``FleetView`` snapshot that schedulers see, from the store."""

from __future__ import annotations

from typing import Any

from controlplane.conditions import is_true
from controlplane.models import Resource
from plugins.types import FleetView, Gpu, NodeView


def _gpu(device: dict[str, Any], node: str, taken: dict[tuple[str, int], str]) -> Gpu | None:
    """A Gpu from a reported device; one that does not parse is left out, not fatal,
    so a bad status written by hand cannot stop scheduling for the whole fleet."""
    try:
        index = int(device["index"])
        return Gpu(
            index=index,
            type=str(device.get("type", "unknown")),
            memory_mib=int(device.get("memoryMiB", 0)),
            healthy=bool(device.get("healthy", True)),
            allocated_to=taken.get((node, index)),
        )
    except (KeyError, TypeError, ValueError):
        return None


def allocations() -> dict[tuple[str, int], str]:
    """(node, gpu index) -> "Kind/name" of the owner of the Workload bound there."""
    taken: dict[tuple[str, int], str] = {}
    rows = Resource.objects.filter(kind="Workload").values_list("node_name", "gpu_indices", "owner_ref")
    for node_name, indices, owner in rows:
        for index in filter(None, indices.split(",")):
            taken[(node_name, int(index))] = owner
    return taken


def ready_node_names() -> set[str]:
    """Nodes that are Ready and not being deleted: the cheap check every reconcile makes."""
    rows = Resource.objects.filter(kind="Node", deletion_timestamp__isnull=True).values_list("name", "status")
    return {name for name, status in rows if is_true(status, "Ready")}


def node_names() -> set[str]:
    return set(Resource.objects.filter(kind="Node").values_list("name", flat=True))


def snapshot(cluster: str | None = None) -> FleetView:
    """Read only the columns a scheduler needs (values, not model instances): at a
    thousand Workloads, decoding whole rows was most of a reconcile's time."""
    taken = allocations()
    nodes = []
    queryset = Resource.objects.filter(kind="Node").order_by("name")
    if cluster:
        queryset = queryset.filter(cluster=cluster)
    rows = queryset.values_list("name", "labels", "spec", "status", "deletion_timestamp")
    for name, labels, spec, status, deleting in rows:
        devices, conditions = status.get("devices"), status.get("conditions")
        gpus = [gpu for gpu in (_gpu(d, name, taken) for d in devices or [] if isinstance(d, dict)) if gpu]
        nodes.append(
            NodeView(
                name=name,
                cluster=spec.get("cluster"),
                labels={**labels, **spec.get("labels", {})},
                ready=is_true({"conditions": conditions or []}, "Ready") and deleting is None,
                schedulable=not spec.get("unschedulable", False),
                gpus=gpus,
            )
        )
    prices: dict[str, float] = {}
    budgets: list[float] = []
    clusters = Resource.objects.filter(kind="Cluster")
    if cluster:
        clusters = clusters.filter(name=cluster)
    for spec in clusters.values_list("spec", flat=True):
        prices.update(spec.get("gpuPrices", {}))
        if spec.get("powerBudgetWatts"):
            budgets.append(float(spec["powerBudgetWatts"]))
    profiles = list(Resource.objects.filter(kind="Profile").order_by("name").values_list("spec", flat=True))
    return FleetView(
        nodes=nodes,
        prices=prices,
        # With no cluster named, the budgets of all clusters add up to the fleet's.
        power_budget_watts=sum(budgets) if budgets else None,
        profiles=profiles,
    )
