"""Cluster controller: aggregate capacity (GPUs by type, free, allocated, cost per hour)."""

from __future__ import annotations

import copy
from collections import defaultdict

from django.db import transaction

from controlplane import fleet, store
from controlplane.conditions import set_condition


def capacity(name: str, prices: dict[str, float]) -> dict:
    view = fleet.snapshot(cluster=name)
    by_type: dict[str, dict[str, int]] = defaultdict(
        lambda: {"total": 0, "allocated": 0, "free": 0, "unhealthy": 0}
    )
    cost = 0.0
    for node in view.nodes:
        for gpu in node.gpus:
            counts = by_type[gpu.type]
            counts["total"] += 1
            if gpu.allocated_to is not None:
                counts["allocated"] += 1
                cost += prices.get(gpu.type, 0.0)
            elif not (gpu.healthy and node.ready):
                counts["unhealthy"] += 1
            else:
                counts["free"] += 1
    return {
        "nodes": {"total": len(view.nodes), "ready": sum(n.ready for n in view.nodes)},
        "gpus": dict(sorted(by_type.items())),
        "costPerHour": round(cost, 4),
        "unpricedTypes": sorted(t for t in by_type if t not in prices),
    }


def reconcile(name: str) -> None:
    with transaction.atomic():
        if store.find("Cluster", name) is None:
            return
        # Locked: the power-cap controller writes status.power on the same row.
        cluster = store.get("Cluster", name, for_update=True)
        if cluster.deletion_timestamp is not None:
            return
        status = copy.deepcopy(cluster.status)
        status["capacity"] = capacity(name, cluster.spec.get("gpuPrices", {}))
        status["observedGeneration"] = cluster.generation
        nodes = status["capacity"]["nodes"]
        set_condition(
            status,
            "Ready",
            nodes["ready"] > 0,
            "NodesReady" if nodes["ready"] else "NoReadyNodes",
            f"{nodes['ready']}/{nodes['total']} nodes ready",
        )
        store.update_status(cluster, status)
