"""One Kubernetes Node into one Flotilla Node: GPUs, labels, readiness, cordon, link.

Decisions (docs/kubernetes.md explains them to operators):

- **Ready stays the agent's.** Flotilla's ``Ready`` condition means "an agent is
  heartbeating and can run Workloads here"; the heartbeat path sets it back to True
  on its next beat, so Kubernetes could not hold it False anyway. Kubernetes'
  own view is the separate condition ``KubernetesReady`` (its Ready condition's status,
  reason and message) plus an event when it turns False. A Node known only from
  Kubernetes (no agent yet) is created ``Ready=False`` with reason ``NoAgent``, so no
  Workload is placed where nothing would run it.
- **Cordon follows Kubernetes' transitions.** ``spec.unschedulable`` is the operator's,
  so it is written only when Kubernetes' ``spec.unschedulable`` changes (the last value
  seen is kept in ``status.kubernetes.unschedulable``): ``kubectl cordon`` cordons the
  Flotilla Node and ``kubectl uncordon`` uncordons it, while a cordon set in Flotilla
  alone survives.
- **Devices come from the agent when there is one.** NVML sees more than a node's
  labels do, so ``status.devices`` is derived from ``nvidia.com/gpu`` capacity and the
  product and memory labels only for a Node no agent has registered (no
  ``status.nodeInfo``). ``status.kubernetes.gpus`` always records what Kubernetes says.
- **A Node gone from Kubernetes is marked, not silently dropped.** One that an agent
  registered keeps its state and gets ``KubernetesReady=False``, reason
  ``DeletedFromKubernetes``, ``status.kubernetes.deleted: true`` and a Warning event;
  one that only discovery made is deleted, with an event.
- Only GPU nodes are mirrored (``nvidia.com/gpu`` capacity or the
  ``nvidia.com/gpu.present`` label), plus any node matching a Node an agent registered.

Every write goes through ``controlplane.store`` under the writers' lock, and a Node
whose mirrored content is unchanged is not written at all: the kubelet reports every
few seconds and the watch log must not churn.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction

from agents.devices import gpu_type_of
from controlplane import events, store
from controlplane.conditions import get_condition, set_condition
from controlplane.models import Resource

SOURCE = "kubernetes-nodes"
GPU_RESOURCE = "nvidia.com/gpu"
PRODUCT_LABEL = "nvidia.com/gpu.product"
MEMORY_LABEL = "nvidia.com/gpu.memory"
PRESENT_LABEL = "nvidia.com/gpu.present"
HOSTNAME_LABEL = "kubernetes.io/hostname"
CONDITION = "KubernetesReady"
# Kubernetes labels copied onto the Flotilla Node (metadata.labels); others are left alone.
MIRRORED_PREFIXES = ("nvidia.com/",)
MIRRORED_KEYS = frozenset(
    {
        HOSTNAME_LABEL,
        "node.kubernetes.io/instance-type",
        "topology.kubernetes.io/region",
        "topology.kubernetes.io/zone",
    }
)


def mirrored(key: str) -> bool:
    return key in MIRRORED_KEYS or key.startswith(MIRRORED_PREFIXES)


@dataclass(frozen=True)
class KubeNode:
    """What Flotilla reads from a Kubernetes Node object (a JSON dict from the API)."""

    name: str
    uid: str
    hostname: str
    ready: bool
    ready_reason: str
    ready_message: str
    unschedulable: bool
    gpus: int
    product: str | None
    memory_mib: int | None
    labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, obj: dict[str, Any]) -> KubeNode:
        metadata, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
        labels = metadata.get("labels") or {}
        ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None) or {}
        return cls(
            name=metadata["name"],
            uid=metadata.get("uid") or "",
            hostname=labels.get(HOSTNAME_LABEL) or metadata["name"],
            ready=ready.get("status") == "True",
            ready_reason=ready.get("reason") or ("NodeStatusUnknown" if not ready else ""),
            ready_message=ready.get("message") or ("" if ready else "the node reports no Ready condition"),
            unschedulable=bool(spec.get("unschedulable")),
            gpus=_count((status.get("capacity") or {}).get(GPU_RESOURCE)),
            product=labels.get(PRODUCT_LABEL),
            memory_mib=_count(labels.get(MEMORY_LABEL)) or None,
            labels={k: v for k, v in labels.items() if mirrored(k)},
        )

    @property
    def has_gpus(self) -> bool:
        return self.gpus > 0 or self.labels.get(PRESENT_LABEL) == "true"

    def devices(self) -> list[dict[str, Any]]:
        """The agent's device shape, from capacity and labels (one entry per GPU)."""
        name = (self.product or "GPU").replace("-", " ")
        memory = self.memory_mib or 0
        return [
            {
                "index": index,
                "type": gpu_type_of(name, memory),
                "name": name,
                "memoryMiB": memory,
                "healthy": True,
                "source": "kubernetes",
            }
            for index in range(self.gpus)
        ]

    def link(self) -> dict[str, Any]:
        """``status.kubernetes``: which Kubernetes node this is and what it last said."""
        return {
            "name": self.name,
            "uid": self.uid,
            "hostname": self.hostname,
            "ready": self.ready,
            "unschedulable": self.unschedulable,
            "gpus": {"count": self.gpus, "product": self.product, "memoryMiB": self.memory_mib},
        }


def _count(value: Any) -> int:
    """A plain integer quantity ("8"), else 0: GPU counts and MiB are never fractional."""
    try:
        return max(0, int(str(value)))
    except (TypeError, ValueError):
        return 0


def _short(hostname: str) -> str:
    return hostname.split(".")[0].lower()


def _find(kube: KubeNode) -> Resource | None:
    """The Flotilla Node for this Kubernetes node: linked by uid, else same name, else an
    agent-registered Node on the same host (agent named differently from the node)."""
    if kube.uid:
        linked = Resource.objects.filter(kind="Node", status__kubernetes__uid=kube.uid).first()
        if linked is not None:
            return linked
    named = store.find("Node", kube.name)
    if named is not None:
        return named
    host = _short(kube.hostname)
    for node in Resource.objects.filter(kind="Node", status__has_key="nodeInfo"):
        if (node.status.get("kubernetes") or {}).get("deleted") is False:
            continue  # linked to another live Kubernetes node
        if _short(str((node.status.get("nodeInfo") or {}).get("hostname") or "")) == host:
            return node
    return None


def _plan(node: Resource, kube: KubeNode) -> tuple[dict[str, Any], dict[str, str], bool | None, list[tuple]]:
    """(status, labels, new spec.unschedulable or None, events) for an existing Node."""
    status = copy.deepcopy(node.status)
    before = status.get("kubernetes") or {}
    notes: list[tuple] = []
    if not before or before.get("uid") != kube.uid:
        notes.append(
            ("KubernetesLinked", f"linked to Kubernetes node {kube.name} (uid {kube.uid})", "Normal")
        )
    status["kubernetes"] = {**kube.link(), "deleted": False}
    was_ready = get_condition(status, CONDITION)
    if set_condition(status, CONDITION, kube.ready, kube.ready_reason, kube.ready_message):
        if not kube.ready:
            notes.append(
                (
                    "KubernetesNotReady",
                    f"Kubernetes reports {kube.ready_reason}: {kube.ready_message}",
                    "Warning",
                )
            )
        elif was_ready is not None and was_ready.get("status") != "True":
            notes.append(("KubernetesReady", "Kubernetes reports the node Ready again", "Normal"))
    if "nodeInfo" not in status:
        status["devices"] = kube.devices()
    labels = {k: v for k, v in node.labels.items() if not mirrored(k)} | kube.labels
    cordon = None
    if kube.unschedulable != bool(before.get("unschedulable", False)):
        if bool(node.spec.get("unschedulable", False)) != kube.unschedulable:
            cordon = kube.unschedulable
            word = "cordoned" if cordon else "uncordoned"
            notes.append(("Cordoned" if cordon else "Uncordoned", f"{word} in Kubernetes", "Normal"))
    return status, labels, cordon, notes


def _changes(node: Resource, kube: KubeNode) -> bool:
    status, labels, cordon, _ = _plan(node, kube)
    return status != node.status or labels != node.labels or cordon is not None


def mirror(obj: dict[str, Any], cluster: str | None = None) -> str:
    """Bring the Flotilla Node in line with one Kubernetes Node object.

    Returns ``created``, ``updated``, ``unchanged`` or ``skipped`` (a node without GPUs
    that no agent registered). An unlocked read decides first whether anything changed,
    so the common case takes no lock and writes nothing.
    """
    kube = KubeNode.parse(obj)
    current = _find(kube)
    if current is None and not kube.has_gpus:
        return "skipped"
    if current is not None and not _changes(current, kube):
        return "unchanged"
    with transaction.atomic():
        store.lock_writes()
        current = _find(kube)
        if current is None:
            _create(kube, cluster)
            return "created"
        node = store.get("Node", current.name, for_update=True)
        status, labels, cordon, notes = _plan(node, kube)
        changed = store.update_status(node, status)
        spec = {**node.spec, "unschedulable": cordon} if cordon is not None else None
        changed = store.update(node, spec=spec, labels=labels) or changed
        for reason, message, type_ in notes:
            events.record(node, reason, message, type_=type_, source=SOURCE)
        return "updated" if changed else "unchanged"


def _create(kube: KubeNode, cluster: str | None) -> Resource:
    status: dict[str, Any] = {"devices": kube.devices(), "kubernetes": {**kube.link(), "deleted": False}}
    set_condition(
        status, "Ready", False, "NoAgent", "discovered through Kubernetes; no agent has registered here"
    )
    set_condition(status, CONDITION, kube.ready, kube.ready_reason, kube.ready_message)
    spec = {"cluster": cluster, "unschedulable": kube.unschedulable, "labels": {}}
    node = store.create("Node", kube.name, spec, labels=kube.labels, status=status)
    events.record(node, "Discovered", f"discovered through Kubernetes with {kube.gpus} GPUs", source=SOURCE)
    return node


def forget(obj: dict[str, Any]) -> str:
    """The Kubernetes node is gone: mark its Flotilla Node, or delete a discovery-only one.

    Returns ``deleted``, ``marked`` or ``unchanged``.
    """
    metadata = obj["metadata"]
    uid, name = metadata.get("uid") or "", metadata["name"]
    with transaction.atomic():
        store.lock_writes()
        found = Resource.objects.filter(kind="Node", status__kubernetes__uid=uid).first() if uid else None
        if found is None:
            return "unchanged"
        node = store.get("Node", found.name, for_update=True)
        if "nodeInfo" not in node.status:
            events.record(node, "Removed", f"Kubernetes node {name} was deleted", source=SOURCE)
            store.request_delete(node)
            return "deleted"
        status = copy.deepcopy(node.status)
        status["kubernetes"] = {**status.get("kubernetes", {}), "deleted": True, "ready": False}
        message = f"Kubernetes node {name} was deleted; the agent's registration is kept"
        set_condition(status, CONDITION, False, "DeletedFromKubernetes", message)
        if not store.update_status(node, status):
            return "unchanged"
        events.record(node, "KubernetesNodeDeleted", message, type_="Warning", source=SOURCE)
        return "marked"


def linked_uids() -> dict[str, str]:
    """uid -> Kubernetes name of every Flotilla Node linked to a live Kubernetes node."""
    found = {}
    for status in Resource.objects.filter(kind="Node", status__has_key="kubernetes").values_list(
        "status", flat=True
    ):
        link = status.get("kubernetes") or {}
        if link.get("uid") and not link.get("deleted"):
            found[link["uid"]] = link.get("name") or ""
    return found
