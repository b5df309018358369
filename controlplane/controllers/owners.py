"""Deployment and TrainingJob controller: owner → scheduler plugin → Workloads.

Level-triggered: each pass reads the owner and all of its Workloads, drops
Workloads on lost nodes, removes excess replicas, asks the scheduler plugin to
place the missing ones, and writes Workloads, conditions and events in one
transaction. Deletion removes the Workloads before the finalizer is lifted.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any, NamedTuple

from django.db import transaction
from pydantic import BaseModel, ValidationError

from common.specs import KINDS, WORKLOAD_FINALIZER, DeploymentSpec, TrainingJobSpec
from controlplane import events, fleet, store
from controlplane.conditions import is_true, set_condition
from controlplane.controllers.workload_config import runtime_config
from controlplane.kube.pods import executor_spec
from controlplane.models import Event, Resource
from controlplane.policies import PolicyProblem, resolve
from plugins.planning import PlanProblem
from plugins.types import FleetView, PlacementRequest, SchedulePlan

log = logging.getLogger(__name__)
SOURCE = "owner-controller"
REPLICA_LABEL = "flotilla.dev/replica"
OWNER_LABEL = "flotilla.dev/owner"


def role_of(kind: str) -> str:
    return "train" if kind == "TrainingJob" else "serve"


def desired_replicas(kind: str, spec: DeploymentSpec | TrainingJobSpec) -> int:
    return spec.replicas if isinstance(spec, DeploymentSpec) else 1


def workload_name(owner: Resource, role: str, index: int) -> str:
    name = f"{owner.name}-{role}-{index}"
    if len(name) <= 63:
        return name
    return f"{owner.name[:40]}-{str(owner.uid)[:8]}-{role}-{index}"[:63]


def replica_index(workload: Resource) -> int:
    try:
        return int(workload.labels.get(REPLICA_LABEL, "0"))
    except ValueError:
        return 0


def owned_workloads(owner: Resource) -> list[Resource]:
    return sorted(Resource.objects.filter(kind="Workload", owner_uid=str(owner.uid)), key=replica_index)


class Planned(NamedTuple):
    """A sizing plan made before the writers' lock was taken, valid while the owner
    (its resourceVersion) and its scheduler are unchanged."""

    resource_version: int
    scheduler: str
    plan: SchedulePlan | None
    problem: str | None
    # The snapshot the plan was made on, refreshed for placement (fleet.refresh).
    view: tuple[FleetView, fleet.Basis] | None = None


def reconcile(kind: str, name: str) -> None:
    planned = _plan_ahead(kind, name)
    with transaction.atomic():
        store.lock_writes()  # scheduling reads free GPUs; no other writer may interleave
        owner = store.find(kind, name)
        if owner is None:
            return
        if owner.deletion_timestamp is not None:
            _finalize(owner)
        else:
            _converge(owner, planned)


def _plan_ahead(kind: str, name: str) -> Planned | None:
    """Size a Deployment before taking the writers' lock.

    A sizing plan runs the simulator and reads the whole fleet; done under the lock
    it would hold every other writer (applies, heartbeats' status writes, other
    reconciles) for that long. The plan is used only if the owner is unchanged once
    the lock is held; placement itself still happens under the lock, on a fresh
    snapshot, so a plan made on slightly stale free counts can only leave replicas
    unplaced for the next pass, never double-book a GPU.
    """
    if kind != "Deployment":
        return None
    owner = store.find(kind, name)
    if owner is None or owner.deletion_timestamp is not None:
        return None
    try:
        spec = DeploymentSpec.model_validate(owner.spec)
    except ValidationError:
        return None  # _converge reports it
    choice = scheduler_for(spec)
    if isinstance(choice, str):
        return None
    views: list[tuple[FleetView, fleet.Basis]] = []

    def take_snapshot() -> FleetView:
        views.append(fleet.reusable_snapshot())
        return views[-1][0]

    plan, problem = _sizing_plan(owner, spec, choice, owner.status, take_snapshot)
    return Planned(owner.resource_version, choice[0].name, plan, problem, views[-1] if views else None)


def _finalize(owner: Resource) -> None:
    workloads = owned_workloads(owner)
    gone = sum(store.request_delete(workload) for workload in workloads)
    if workloads:
        events.record(owner, "Deleting", f"removed {gone}/{len(workloads)} workloads", source=SOURCE)
    if gone == len(workloads):
        # Workloads with finalizers of their own (an agent stopping them) hold the owner.
        store.set_finalizers(owner, [f for f in owner.finalizers if f != WORKLOAD_FINALIZER])


def _converge(owner: Resource, planned: Planned | None = None) -> None:
    info = KINDS[owner.kind]
    spec = info.spec_model.model_validate(owner.spec)
    status = copy.deepcopy(owner.status)
    if WORKLOAD_FINALIZER not in owner.finalizers:
        store.set_finalizers(owner, [*owner.finalizers, WORKLOAD_FINALIZER])

    view: FleetView | None = None
    if planned is not None and planned.view is not None:
        # The plan's snapshot brought up to date under the lock: its Ready nodes are
        # current, and placement uses it unless something is deleted below.
        view, basis = fleet.refresh(*planned.view)
        usable = {node.name for node in view.nodes if node.ready}
    else:
        usable = fleet.ready_node_names()
    workloads = owned_workloads(owner)
    deleted = False

    # Replicas on nodes that are gone or not ready are replaced elsewhere, except in
    # a full disruption: when no node at all is Ready, the likelier cause is our own
    # outage (nobody's heartbeats got through), and moving everything would only
    # restart every Workload. Replicas on deleted nodes are replaced regardless.
    existing = fleet.node_names() if not usable else set()
    for workload in [
        w for w in workloads if w.node_name not in usable and (usable or w.node_name not in existing)
    ]:
        events.record(
            owner,
            "Rescheduling",
            f"workload/{workload.name} lost its node {workload.node_name} (not ready or gone)",
            type_="Warning",
            source=SOURCE,
        )
        store.request_delete(workload)
        workloads.remove(workload)
        deleted = True

    choice = scheduler_for(spec)
    if (
        planned is not None
        and planned.resource_version == owner.resource_version
        and not isinstance(choice, str)
        and planned.scheduler == choice[0].name
    ):
        plan, plan_problem = planned.plan, planned.problem
    else:
        plan, plan_problem, planned = *_sizing_plan(owner, spec, choice, status), None
    targets: dict[str | None, int]
    if plan is not None and not plan.supported:
        targets = {None: 0}  # shown, not run: see plugins/distserve.py
    elif plan is not None:
        targets = dict(plan.replicas)
    elif plan_problem:
        targets = {None: len(workloads)}  # keep what runs; place nothing until it can be planned
    else:
        targets = {None: desired_replicas(owner.kind, spec)}
    succeeded = owner.kind == "TrainingJob" and _training_finished(owner, status, workloads)
    if succeeded:
        targets = {None: 0}  # done: release the GPUs, and never start it again
    desired = sum(targets.values())

    groups = _group_by_target(workloads, targets)
    excess = [w for group, kept in groups.items() for w in kept[targets.get(group, 0) :]]
    for workload in excess:
        store.request_delete(workload)
    if excess:
        deleted = True
        events.record(owner, "ScaledDown", f"removed {len(excess)} replicas", source=SOURCE)
    workloads = sorted(
        (w for group, kept in groups.items() for w in kept[: targets.get(group, 0)]), key=replica_index
    )

    unschedulable: str | None = None
    missing = {group: n - len(groups.get(group, [])) for group, n in targets.items()}
    if isinstance(choice, str) and any(n > 0 for n in missing.values()):
        unschedulable = choice
    elif any(n > 0 for n in missing.values()):
        # Read after the deletes above, in the same transaction: what they freed is free.
        if view is None:
            view = fleet.snapshot()
        elif deleted:
            view = fleet.refresh(view, basis)[0]
        reasons = []
        for group, count in missing.items():
            if count > 0:
                reason = _place(owner, spec, choice, view, workloads, count, group)
                reasons += [reason] if reason else []
        unschedulable = "; ".join(reasons) or None
    if plan_problem:
        unschedulable = plan_problem
    if plan is not None and plan.shortfall and not unschedulable:
        unschedulable = f"partial mix: {plan.shortfall}"

    if unschedulable:
        unschedulable = f"{len(workloads)}/{desired} scheduled; {unschedulable}"
    if succeeded:
        set_condition(status, "Scheduled", True, "Completed", "training finished")
        set_condition(status, "Ready", False, "Completed", "training finished")
        set_condition(status, "Progressing", False, "Completed", "training finished")
    elif plan is not None and not plan.supported:
        message = f"{plan.reason}; planned: {describe_plan(plan)}"
        if set_condition(status, "Scheduled", False, "RuntimeUnsupported", message):
            events.record(owner, "RuntimeUnsupported", message, type_="Warning", source=SOURCE)
        set_condition(status, "Ready", False, "RuntimeUnsupported", "nothing runs: the plan is shown only")
        set_condition(status, "Progressing", False, "RuntimeUnsupported", "waiting for runtime support")
    else:
        _set_conditions(owner, status, workloads, desired, unschedulable)
    if plan is not None:
        status["plan"] = {**plan.to_dict(), "generation": owner.generation}
    elif not plan_problem:
        status.pop("plan", None)
    _note_unsupported(owner, spec)
    status["observedGeneration"] = owner.generation
    status["replicas"] = {
        "desired": desired,
        "scheduled": len(workloads),
        "ready": sum(is_true(w.status, "Ready") for w in workloads),
    }
    status["endpoints"] = [
        w.status["endpoint"] for w in workloads if is_true(w.status, "Ready") and w.status.get("endpoint")
    ]
    if owner.kind == "TrainingJob":
        progress = next((w.status["progress"] for w in workloads if w.status.get("progress")), None)
        if progress:
            status["progress"] = progress
    status["placements"] = [
        {
            "workload": w.name,
            "node": w.node_name,
            "gpus": w.spec.get("gpus", []),
            "role": w.spec.get("role"),
        }
        for w in workloads
    ]
    store.update_status(owner, status)


def _training_finished(owner: Resource, status: dict[str, Any], workloads: list[Resource]) -> bool:
    """A TrainingJob is done once its Workload reported Succeeded; that sticks."""
    if is_true(status, "Succeeded"):
        return True
    done = next((w for w in workloads if w.status.get("phase") == "Succeeded"), None)
    if done is None:
        return False
    progress = done.status.get("progress", {})
    set_condition(status, "Succeeded", True, "Completed", f"reached step {progress.get('step', '?')}")
    status["progress"] = progress
    events.record(owner, "Completed", f"training finished on {done.node_name}", source=SOURCE)
    return True


def _note_unsupported(owner: Resource, spec: DeploymentSpec | TrainingJobSpec) -> None:
    """Checkpointing comes with the checkpointer plugins; until then say, once, that
    the validated spec.checkpoint section is not acted on."""
    if not isinstance(spec, TrainingJobSpec):
        return
    reason = "CheckpointingNotAvailable"
    if Event.objects.filter(kind=owner.kind, name=owner.name, uid=str(owner.uid), reason=reason).exists():
        return
    policy = f" (policy {spec.checkpoint.policy})" if spec.checkpoint.policy else ""
    events.record(
        owner,
        reason,
        f"spec.checkpoint{policy} is validated but not acted on yet: no checkpoints are written, "
        "and a restarted Workload trains from step 0",
        type_="Warning",
        source=SOURCE,
    )


def scheduler_for(spec: DeploymentSpec | TrainingJobSpec) -> tuple[Any, BaseModel] | str:
    """The owner's scheduler plugin and its params, or why there is none."""
    cluster_spec = {}
    if spec.cluster:
        cluster = store.find("Cluster", spec.cluster)
        if cluster is None:
            return f"cluster {spec.cluster} does not exist; apply it or remove spec.cluster"
        cluster_spec = cluster.spec
    policy_name = spec.policies.scheduler or cluster_spec.get("policies", {}).get("scheduler")
    try:
        return resolve("scheduler", policy_name)
    except PolicyProblem as exc:
        return f"{exc}; {exc.fix}"


def placement_request(
    owner: Resource, spec: DeploymentSpec | TrainingJobSpec, replicas: int, gpu_type: str | None = None
) -> PlacementRequest:
    return PlacementRequest(
        owner_kind=owner.kind,
        owner_name=owner.name,
        replicas=replicas,
        gpus_per_replica=spec.resources.gpusPerReplica,
        gpu_types=[gpu_type] if gpu_type else list(spec.resources.gpuTypes),
        gpu_memory_gib=spec.resources.gpuMemoryGiB,
        node_selector=dict(spec.resources.nodeSelector),
        cluster=spec.cluster,
        role=role_of(owner.kind),
        spec=owner.spec,
    )


def _sizing_plan(
    owner: Resource,
    spec: DeploymentSpec | TrainingJobSpec,
    choice: Any,
    status: dict[str, Any],
    take_snapshot: Callable[[], FleetView] = fleet.snapshot,
) -> tuple[SchedulePlan | None, str | None]:
    """Ask a sizing scheduler (melange, distserve) how many replicas of which type to run.

    Only Deployments that declare a request rate (or disaggregation) are sized. A
    plan that was placed in full for this generation is kept, not re-solved on
    every pass: replicas must not move because another owner took some GPUs.
    """
    if isinstance(choice, str) or not isinstance(spec, DeploymentSpec):
        return None, None
    scheduler, params = choice
    if not hasattr(scheduler, "plan"):
        return None, None
    if not spec.workload.requestsPerSecond and spec.disaggregation != "auto":
        return None, None
    previous = status.get("plan") or {}
    if (
        previous.get("generation") == owner.generation
        and previous.get("policy") == scheduler.name
        and previous.get("supported", True)
        and not previous.get("shortfall")
        and is_true(status, "Scheduled")
    ):
        return SchedulePlan.from_dict(previous), None
    try:
        request = placement_request(owner, spec, 0)
        request.observed = status.get("observedWorkload")  # traffic measured live, if any
        plan = scheduler.plan(request=request, fleet=take_snapshot(), params=params)
    except PlanProblem as exc:
        return None, f"cannot plan with {scheduler.name}: {exc}; {exc.field}: {exc.fix}"
    return plan, None


def describe_plan(plan: SchedulePlan) -> str:
    if plan.roles:
        parts = [
            f"{role} {r['instances']}×{r['tensorParallel']}×{r['gpuType']}" for role, r in plan.roles.items()
        ]
    else:
        parts = [f"{n}×{t}" for t, n in sorted(plan.replicas.items())]
    return ", ".join(parts) + f" at ${plan.cost_per_hour:.2f}/h"


def _group_by_target(
    workloads: list[Resource], targets: dict[str | None, int]
) -> dict[str | None, list[Resource]]:
    """Workloads by the GPU type they run on when targets are per type, else all in one group."""
    if set(targets) == {None}:
        return {None: sorted(workloads, key=replica_index)}
    nodes = {w.node_name for w in workloads}
    types: dict[tuple[str, int], str] = {}
    for name, node_status in Resource.objects.filter(kind="Node", name__in=nodes).values_list(
        "name", "status"
    ):
        for device in node_status.get("devices") or []:
            if isinstance(device, dict) and "index" in device:
                types[(name, int(device["index"]))] = str(device.get("type"))
    groups: dict[str | None, list[Resource]] = {}
    for workload in sorted(workloads, key=replica_index):
        gpus = workload.spec.get("gpus") or [0]
        groups.setdefault(types.get((workload.node_name, gpus[0])), []).append(workload)
    return groups


def _place(
    owner: Resource,
    spec: DeploymentSpec | TrainingJobSpec,
    choice: tuple[Any, BaseModel],
    view: Any,
    workloads: list[Resource],
    missing: int,
    gpu_type: str | None = None,
) -> str | None:
    """Place ``missing`` replicas (of ``gpu_type`` when a plan names one); append the
    new Workloads; return why some could not be."""
    scheduler, params = choice
    role = role_of(owner.kind)
    request = placement_request(owner, spec, missing, gpu_type)
    result = scheduler.place(request=request, fleet=view, params=params)
    used = {replica_index(w) for w in workloads}
    free_indices = (i for i in range(len(workloads) + missing + 1) if i not in used)
    created = []
    executors: dict[str | None, dict[str, str]] = {}  # by the node's Cluster, read once per pass
    for placement, index in zip(result.placements[:missing], free_indices, strict=False):
        node = view.node(placement.node)
        cluster = node.cluster if node is not None else None
        if cluster not in executors:
            executors[cluster] = executor_spec(cluster)
        workload = store.create(
            "Workload",
            workload_name(owner, placement.role, index),
            {
                "owner": {"kind": owner.kind, "name": owner.name, "uid": str(owner.uid)},
                "role": placement.role,
                "nodeName": placement.node,
                "gpus": placement.gpus,
                "runtime": "train" if role == "train" else "serve",
                "config": runtime_config(owner),
                # The node's Cluster says who runs it (controlplane/kube/pods.py).
                **executors[cluster],
            },
            labels={OWNER_LABEL: owner.name, REPLICA_LABEL: str(index)},
            owner_references=[
                {"kind": owner.kind, "name": owner.name, "uid": str(owner.uid), "controller": True}
            ],
        )
        created.append(workload)
    workloads.extend(created)
    workloads.sort(key=replica_index)
    if created:
        where = ", ".join(f"{w.node_name}:{w.spec['gpus']}" for w in created)
        events.record(
            owner,
            "Scheduled",
            f"placed {len(created)} replicas with {scheduler.name}: {where}",
            source=SOURCE,
        )
    return result.unschedulable


def _set_conditions(
    owner: Resource,
    status: dict[str, Any],
    workloads: list[Resource],
    desired: int,
    unschedulable: str | None,
) -> None:
    nodes = sorted({w.node_name for w in workloads})
    if unschedulable:
        if set_condition(status, "Scheduled", False, "Unschedulable", unschedulable):
            events.record(owner, "FailedScheduling", unschedulable, type_="Warning", source=SOURCE)
    else:
        set_condition(
            status,
            "Scheduled",
            True,
            "Placed",
            f"{len(workloads)} replicas on {len(nodes)} nodes",
        )
    ready = sum(is_true(w.status, "Ready") for w in workloads)
    noun = "replicas serving" if owner.kind == "Deployment" else "replicas running"
    if desired == 0:
        set_condition(status, "Ready", True, "ScaledToZero", "0 replicas desired")
    elif ready >= desired:
        set_condition(status, "Ready", True, "AllReplicasReady", f"{ready}/{desired} {noun}")
    else:
        set_condition(status, "Ready", False, "Starting", f"{ready}/{desired} {noun}")
    done = not unschedulable and ready >= desired
    set_condition(
        status,
        "Progressing",
        not done,
        "Converged" if done else ("WaitingForCapacity" if unschedulable else "WaitingForReplicas"),
        f"{len(workloads)}/{desired} scheduled, {ready}/{desired} ready",
    )
