"""Build the plain ``FleetView`` snapshot that schedulers see, from the store."""

from __future__ import annotations

from typing import Any

from controlplane.conditions import is_true
from controlplane.models import Resource
from plugins.types import FleetView, Gpu, NodeView


def devices_of(status: dict[str, Any]) -> list[dict[str, Any]]:
    return [d for d in status.get("devices", []) if isinstance(d, dict)]


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
    for spec in Resource.objects.filter(kind="Workload").values_list("spec", flat=True):
        owner = spec.get("owner", {})
        for index in spec.get("gpus", []):
            taken[(spec.get("nodeName", ""), index)] = f"{owner.get('kind')}/{owner.get('name')}"
    return taken


def snapshot(cluster: str | None = None) -> FleetView:
    taken = allocations()
    nodes = []
    queryset = Resource.objects.filter(kind="Node").order_by("name")
    if cluster:
        queryset = queryset.filter(cluster=cluster)
    for node in queryset:
        gpus = [gpu for gpu in (_gpu(d, node.name, taken) for d in devices_of(node.status)) if gpu]
        nodes.append(
            NodeView(
                name=node.name,
                cluster=node.spec.get("cluster"),
                labels={**node.labels, **node.spec.get("labels", {})},
                ready=is_true(node.status, "Ready") and node.deletion_timestamp is None,
                schedulable=not node.spec.get("unschedulable", False),
                gpus=gpus,
            )
        )
    prices: dict[str, float] = {}
    clusters = Resource.objects.filter(kind="Cluster")
    if cluster:
        clusters = clusters.filter(name=cluster)
    for spec in clusters.values_list("spec", flat=True):
        prices.update(spec.get("gpuPrices", {}))
    return FleetView(nodes=nodes, prices=prices)
