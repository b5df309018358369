"""Build the plain ``FleetView`` snapshot that schedulers see, from the store."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from django.db import connection
from django.db.models import CharField
from django.db.models.functions import Cast

from controlplane.conditions import is_true
from controlplane.models import Resource
from plugins.types import FleetView, Gpu, NodeView

# (index, type, memory MiB, healthy) of a device, parsed once per Node version.
Device = tuple[int, str, int, bool]
# Node name -> (uid, resourceVersion) its parsed row was read at.
Versions = dict[str, tuple[str, int]]
Allocations = dict[tuple[str, int], str]


@dataclass(frozen=True)
class Basis:
    """What a snapshot was built from, so :func:`refresh` can tell what changed since."""

    versions: Versions
    taken: Allocations


def _device(device: dict[str, Any]) -> Device | None:
    """A reported device's fields; one that does not parse is left out, not fatal,
    so a bad status written by hand cannot stop scheduling for the whole fleet."""
    try:
        return (
            int(device["index"]),
            str(device.get("type", "unknown")),
            int(device.get("memoryMiB", 0)),
            bool(device.get("healthy", True)),
        )
    except (KeyError, TypeError, ValueError):
        return None


@dataclass(frozen=True)
class _ParsedNode:
    """What a snapshot needs from one Node row, decoded from its JSON once."""

    cluster: str | None
    labels: dict[str, str]
    ready: bool
    schedulable: bool
    devices: tuple[Device, ...]


class _NodeCache:
    """Parsed Node rows by name, valid while the row's resourceVersion is unchanged.

    Every reconcile reads the whole fleet, and decoding 1,250 Nodes' JSON status
    (10,000 devices) was most of a reconcile's time at that scale. Every write to a
    resource goes through ``store`` and takes a new resourceVersion from one counter,
    so (uid, resourceVersion) names one content: a snapshot reads only the small
    columns of every Node and decodes the JSON of those that changed. Heartbeats do
    not rewrite a Ready Node (see ``controllers.nodes.heartbeat``), so in a steady
    fleet nothing is decoded at all. Versions are read in the caller's transaction,
    so a snapshot under the writers' lock is as fresh as an uncached one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[str, tuple[tuple[str, int], _ParsedNode]] = {}

    def nodes(self, cluster: str | None = None) -> tuple[list[tuple[str, _ParsedNode]], Versions]:
        """The fleet's Nodes (of ``cluster``), parsed, and the versions they were read at."""
        versions = self.versions(cluster)
        with self._lock:
            known = {name: self._rows.get(name) for name in versions}
        stale = {name for name, entry in known.items() if entry is None or entry[0] != versions[name]}
        if stale:
            queryset = Resource.objects.filter(kind="Node")
            if cluster:
                queryset = queryset.filter(cluster=cluster)
            # A cold cache reads everything at once rather than through a huge IN list.
            wanted = queryset if len(stale) > 500 else queryset.filter(name__in=stale)
            fresh = wanted.annotate(uid_text=Cast("uid", CharField())).values_list(
                "name", "uid_text", "resource_version", "labels", "spec", "status", "deletion_timestamp"
            )
            parsed = {
                name: ((uid, version), _parse(labels, spec, status, deleting))
                for name, uid, version, labels, spec, status, deleting in fresh
                if name in stale
            }
            for name in stale:
                # Gone since the versions were read: not in this snapshot. Written since:
                # the newer row, at its own version.
                known[name] = parsed.get(name)
                if known[name] is None:
                    del known[name]
                else:
                    versions[name] = known[name][0]
            # Only rows read outside a transaction are certainly committed: inside one,
            # a row this transaction wrote could still roll back, and its version number
            # be handed out again for other content.
            if not connection.in_atomic_block:
                with self._lock:
                    self._rows.update(parsed)
                    if len(self._rows) > 2 * len(versions) + 64 and not cluster:
                        for gone in set(self._rows) - set(versions):
                            del self._rows[gone]
        ordered = sorted(known)
        return [(name, known[name][1]) for name in ordered], {name: versions[name] for name in ordered}

    def versions(self, cluster: str | None = None) -> Versions:
        """Only the versions: what :func:`refresh` compares a snapshot against.

        The uid (random, made once per Node) tells a Node deleted and registered again
        apart, even where a rolled-back transaction handed its row id and version out
        again. Read as text: converting 1,250 UUID objects per snapshot showed in
        profiles.
        """
        queryset = Resource.objects.filter(kind="Node")
        if cluster:
            queryset = queryset.filter(cluster=cluster)
        rows = queryset.annotate(uid_text=Cast("uid", CharField())).values_list(
            "name", "uid_text", "resource_version"
        )
        return {name: (uid, version) for name, uid, version in rows}

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()


def _parse(
    labels: dict[str, str], spec: dict[str, Any], status: dict[str, Any], deleting: Any
) -> _ParsedNode:
    devices = (_device(d) for d in status.get("devices") or [] if isinstance(d, dict))
    return _ParsedNode(
        cluster=spec.get("cluster"),
        labels={**labels, **spec.get("labels", {})},
        ready=is_true({"conditions": status.get("conditions") or []}, "Ready") and deleting is None,
        schedulable=not spec.get("unschedulable", False),
        devices=tuple(d for d in devices if d is not None),
    )


_cache = _NodeCache()


def allocations() -> Allocations:
    """(node, gpu index) -> "Kind/name" of the owner of the Workload bound there."""
    taken: Allocations = {}
    rows = Resource.objects.filter(kind="Workload").values_list("node_name", "gpu_indices", "owner_ref")
    for node_name, indices, owner in rows:
        for index in filter(None, indices.split(",")):
            taken[(node_name, int(index))] = owner
    return taken


def ready_node_names() -> set[str]:
    """Nodes that are Ready and not being deleted: the cheap check every reconcile makes."""
    return {name for name, node in _cache.nodes()[0] if node.ready}


def node_names() -> set[str]:
    return set(Resource.objects.filter(kind="Node").values_list("name", flat=True))


def snapshot(cluster: str | None = None) -> FleetView:
    """Read only what a scheduler needs: the Workloads' small denormalised columns,
    and Nodes through the parsed-row cache above."""
    return versioned_snapshot(cluster)[0]


def versioned_snapshot(cluster: str | None = None) -> tuple[FleetView, Basis]:
    """A snapshot and what it was built from, for :func:`refresh`."""
    taken = allocations()
    busy = {node for node, _ in taken}
    parsed, versions = _cache.nodes(cluster)
    nodes = [
        NodeView(
            name=name,
            cluster=node.cluster,
            labels=dict(node.labels),
            ready=node.ready,
            schedulable=node.schedulable,
            gpus=[
                Gpu(index, gpu_type, memory, healthy, taken.get((name, index)) if name in busy else None)
                for index, gpu_type, memory, healthy in node.devices
            ],
        )
        for name, node in parsed
    ]
    return _with_clusters(nodes, cluster), Basis(versions, taken)


def refresh(view: FleetView, basis: Basis) -> tuple[FleetView, Basis]:
    """``view`` brought up to date: in place when only GPU allocations changed.

    The owner controller plans on a snapshot taken before the writers' lock and
    places under it; rebuilding 10,000 GPUs for the second look cost as much as the
    first. When no Node changed since (same uids and versions), who holds which GPU is
    all that can differ -- prices and profiles do not affect placement -- so every
    GPU's holder is set from a fresh read, which also undoes any mark a scheduler left
    on the view in a transaction that rolled back.
    """
    versions = _cache.versions()
    if versions != basis.versions:
        return versioned_snapshot()
    taken = allocations()
    busy = {node for node, _ in taken}
    for node in view.nodes:
        if node.name in busy:
            for gpu in node.gpus:
                gpu.allocated_to = taken.get((node.name, gpu.index))
        else:
            for gpu in node.gpus:
                gpu.allocated_to = None
    return view, Basis(versions, taken)


_reusable = threading.local()


def reusable_snapshot() -> tuple[FleetView, Basis]:
    """The whole fleet for the owner controller: the last view this thread built,
    refreshed, while no Node changed.

    At 1,250 nodes, building the view's 10,000 GPU objects was a sixth of a
    reconcile. Only the owner controller uses it, and only from its own thread (a
    Celery worker process reconciles one object at a time): schedulers mark GPUs on
    the view they are given, so a view must never be shared between threads. Prices,
    budgets and profiles are read afresh every time.
    """
    last = getattr(_reusable, "view", None)
    if last is None:
        view, basis = versioned_snapshot()
    else:
        view, basis = refresh(*last)
        view = _with_clusters(view.nodes, None)
    _reusable.view = (view, basis)
    return view, basis


def _with_clusters(nodes: list[NodeView], cluster: str | None) -> FleetView:
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
