"""Deployment and TrainingJob controller: owner → scheduler plugin → Workloads.

Level-triggered: each pass reads the owner and all of its Workloads, drops
Workloads on lost nodes, removes excess replicas, asks the scheduler plugin to
place the missing ones, keeps a Deployment's router (``routers.py``), rolls a new
spec out to the replicas (``workload_config.follow_spec``), and writes Workloads,
conditions and events in one transaction. Deletion removes the Workloads (the router
with them) before the finalizer is lifted.

``status.url`` is where clients go: the router's endpoint once it is Ready; with no
router (one replica, no cache policy), that replica's endpoint once it is Ready;
absent otherwise. Ready needs the router Ready too, where there is one.

A TrainingJob's checkpoint history, restores and step times are folded in from what its
Workloads reported (``checkpoints.py``), lost and finished ones included, before they go.
A training Workload that crashed is left to its agent, which restarts it (BackOff) and the
runtime resumes from its newest checkpoint: it is replaced only when its node is lost.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterator
from functools import cache, partial
from typing import Any, NamedTuple

from django.db import transaction
from pydantic import BaseModel

from common.specs import KINDS, WORKLOAD_FINALIZER, DeploymentSpec
from controlplane import events, fleet, store
from controlplane.conditions import is_true, set_condition
from controlplane.controllers import checkpoints, powercap, routers
from controlplane.controllers.routers import Router
from controlplane.controllers.sizing import (
    Choice,
    OwnerSpec,
    Planned,
    describe_plan,
    placement_request,
    plan_ahead,
    role_of,
    scheduler_for,
    sizing_plan,
)
from controlplane.controllers.workload_config import (
    OWNER_LABEL,  # noqa: F401 - named from here by the dashboard and the tests
    REPLICA_LABEL,
    SOURCE,
    create_workload,
    follow_spec,
    runtime_config,
    workload_name,
)
from controlplane.kube.pods import executor_spec
from controlplane.models import Resource
from plugins.types import FleetView, SchedulePlan

log = logging.getLogger(__name__)


def desired_replicas(kind: str, spec: OwnerSpec) -> int:
    return spec.replicas if isinstance(spec, DeploymentSpec) else 1


def replica_index(workload: Resource) -> int:
    try:
        return int(workload.labels.get(REPLICA_LABEL, "0"))
    except ValueError:
        return 0


def owned_workloads(owner: Resource) -> list[Resource]:
    return sorted(Resource.objects.filter(kind="Workload", owner_uid=str(owner.uid)), key=replica_index)


def reconcile(kind: str, name: str) -> None:
    planned = plan_ahead(kind, name)
    with transaction.atomic():
        store.lock_writes()  # scheduling reads free GPUs; no other writer may interleave
        owner = store.find(kind, name)
        if owner is None:
            return
        if owner.deletion_timestamp is not None:
            _finalize(owner)
        else:
            _converge(owner, planned)


def _finalize(owner: Resource) -> None:
    workloads = owned_workloads(owner)
    gone = sum(store.request_delete(workload) for workload in workloads)
    if workloads:
        events.record(owner, "Deleting", f"removed {gone}/{len(workloads)} workloads", source=SOURCE)
    if gone == len(workloads):
        # Workloads with finalizers of their own (an agent stopping them) hold the owner.
        store.remove_finalizer(owner, WORKLOAD_FINALIZER)


class Targets(NamedTuple):
    """How many replicas to run per GPU type (``None``: any type), and why."""

    counts: dict[str | None, int]
    plan: SchedulePlan | None
    plan_problem: str | None
    succeeded: bool  # a TrainingJob that finished: nothing runs again

    @property
    def desired(self) -> int:
        return sum(self.counts.values())


def _converge(owner: Resource, planned: Planned | None = None) -> None:
    """One pass: drop Workloads on lost nodes, decide the targets, scale down, place
    what is missing, roll a new spec out, keep the router, write the status."""
    spec = KINDS[owner.kind].spec_model.model_validate(owner.spec)
    status = copy.deepcopy(owner.status)
    store.add_finalizer(owner, WORKLOAD_FINALIZER)
    view, usable = _placement_view(planned)
    owned = owned_workloads(owner)
    checkpoints.follow(owner, spec, status, list(owned))  # what they reported, lost or finished ones too
    lost = _drop_lost(owner, owned, usable)
    router_workloads, workloads = routers.split(owned)  # the router is no replica
    choice = scheduler_for(spec)
    targets = _targets(owner, spec, choice, status, planned, workloads)
    workloads, missing, scaled_down = _scale_down(owner, workloads, targets.counts)
    # Read only if something is missing, and once: the router is placed on what the replicas left.
    placing = cache(partial(_fresh_view, view, lost or scaled_down))
    unschedulable = _unschedulable(owner, spec, choice, placing, workloads, missing, targets)
    restarting = follow_spec(owner, workloads)
    serving = [w for w in workloads if w not in restarting]  # what the router may send requests to
    router = routers.converge(owner, spec, targets.desired, router_workloads, serving, placing)
    if router.problem:  # said where the replicas' problems are: the Scheduled condition
        unschedulable = "; ".join(
            [unschedulable or f"{len(workloads)}/{targets.desired} scheduled", router.problem]
        )
    _write_status(owner, spec, status, workloads, targets, unschedulable, router)


def _placement_view(planned: Planned | None) -> tuple[tuple[FleetView, fleet.Basis] | None, set[str]]:
    """The plan's snapshot brought up to date under the lock (or None), and the Ready nodes."""
    if planned is None or planned.view is None:
        return None, fleet.ready_node_names()
    # Its Ready nodes are current, and placement uses it unless something is deleted first.
    view = fleet.refresh(*planned.view)
    return view, {node.name for node in view[0].nodes if node.ready}


def _drop_lost(owner: Resource, workloads: list[Resource], usable: set[str]) -> bool:
    """Delete (and take out of ``workloads``) the Workloads whose node is lost; True if any.

    Replicas on nodes that are gone or not ready are replaced elsewhere, except in a
    full disruption: when no node at all is Ready, the likelier cause is our own outage
    (nobody's heartbeats got through), and moving everything would only restart every
    Workload. Replicas on deleted nodes are replaced regardless.
    """
    existing = fleet.node_names() if not usable else set()
    lost = [w for w in workloads if w.node_name not in usable and (usable or w.node_name not in existing)]
    for workload in lost:
        events.record(
            owner,
            "Rescheduling",
            f"workload/{workload.name} lost its node {workload.node_name} (not ready or gone)",
            type_="Warning",
            source=SOURCE,
        )
        store.request_delete(workload)
        workloads.remove(workload)
    return bool(lost)


def _targets(
    owner: Resource,
    spec: OwnerSpec,
    choice: Choice,
    status: dict[str, Any],
    planned: Planned | None,
    workloads: list[Resource],
) -> Targets:
    """Replicas per GPU type: from the sizing plan, else spec.replicas; none once trained."""
    plan, plan_problem = _current_plan(owner, spec, choice, status, planned)
    counts: dict[str | None, int]
    if plan is not None and not plan.supported:
        counts = {None: 0}  # shown, not run: see plugins/distserve.py
    elif plan is not None:
        counts = dict(plan.replicas)
    elif plan_problem:
        counts = {None: len(workloads)}  # keep what runs; place nothing until it can be planned
    else:
        counts = {None: desired_replicas(owner.kind, spec)}
    succeeded = owner.kind == "TrainingJob" and _training_finished(owner, status, workloads)
    if succeeded:
        counts = {None: 0}  # done: release the GPUs, and never start it again
    return Targets(counts, plan, plan_problem, succeeded)


def _current_plan(
    owner: Resource, spec: OwnerSpec, choice: Choice, status: dict[str, Any], planned: Planned | None
) -> tuple[SchedulePlan | None, str | None]:
    """The plan made before the lock while it still holds (same owner version and
    scheduler), else one made now."""
    if (
        planned is not None
        and planned.resource_version == owner.resource_version
        and not isinstance(choice, str)
        and planned.scheduler == choice[0].name
    ):
        return planned.plan, planned.problem
    return sizing_plan(owner, spec, choice, status)


def _scale_down(
    owner: Resource, workloads: list[Resource], counts: dict[str | None, int]
) -> tuple[list[Resource], dict[str | None, int], bool]:
    """Delete the replicas beyond each group's target; return the kept ones, how many each
    group lacks, and whether anything was deleted."""
    groups = _group_by_target(workloads, counts)
    excess = [w for group, kept in groups.items() for w in kept[counts.get(group, 0) :]]
    for workload in excess:
        store.request_delete(workload)
    if excess:
        events.record(owner, "ScaledDown", f"removed {len(excess)} replicas", source=SOURCE)
    kept = sorted((w for group, ws in groups.items() for w in ws[: counts.get(group, 0)]), key=replica_index)
    missing = {group: n - len(groups.get(group, [])) for group, n in counts.items()}
    return kept, missing, bool(excess)


def _unschedulable(
    owner: Resource,
    spec: OwnerSpec,
    choice: Choice,
    placing: Callable[[], FleetView],
    workloads: list[Resource],
    missing: dict[str | None, int],
    targets: Targets,
) -> str | None:
    """Place each group's missing replicas (appended to ``workloads``) on ``placing()``;
    say why not all of them run, or None."""
    reasons: list[str] = []
    if any(n > 0 for n in missing.values()):
        if isinstance(choice, str):
            reasons = [choice]
        else:
            view = placing()
            with _power_gate(view) as blocked:
                for group, count in missing.items():
                    reason = _place(owner, spec, choice, view, workloads, count, group) if count > 0 else None
                    reasons += [reason] if reason else []
                if reasons and blocked:
                    reasons += [
                        f"cluster {name} is over its power budget even at minimum caps, so nothing new "
                        f"is placed there until it has headroom ({why})"
                        for name, why in sorted(blocked.items())
                    ]
    reason = targets.plan_problem or "; ".join(reasons) or None
    if targets.plan is not None and targets.plan.shortfall and not reason:
        reason = f"partial mix: {targets.plan.shortfall}"
    return f"{len(workloads)}/{targets.desired} scheduled; {reason}" if reason else None


@contextlib.contextmanager
def _power_gate(view: FleetView) -> Iterator[dict[str, str]]:
    """While placing, the nodes of Clusters that cannot meet their power budget even at
    minimum caps are unschedulable (controllers.powercap); the view is put back after,
    since it is reused for the next pass."""
    blocked = powercap.blocked_clusters()
    closed = [n for n in view.nodes if n.cluster in blocked and n.schedulable]
    for node in closed:
        node.schedulable = False
    try:
        yield blocked
    finally:
        for node in closed:
            node.schedulable = True


def _fresh_view(view: tuple[FleetView, fleet.Basis] | None, stale: bool) -> FleetView:
    """The snapshot to place on, read after this pass's deletes in the same transaction
    (what they freed is free): the plan's one, refreshed again when ``stale``."""
    if view is None:
        return fleet.snapshot()
    return fleet.refresh(*view)[0] if stale else view[0]


def _write_status(
    owner: Resource,
    spec: OwnerSpec,
    status: dict[str, Any],
    workloads: list[Resource],
    targets: Targets,
    unschedulable: str | None,
    router: Router,
) -> None:
    """Conditions, the plan, and what runs where; one write, none when nothing changed."""
    _set_outcome(owner, status, workloads, targets, unschedulable, router)
    if targets.plan is not None:
        status["plan"] = {**targets.plan.to_dict(), "generation": owner.generation}
    elif not targets.plan_problem:
        status.pop("plan", None)
    status["observedGeneration"] = owner.generation
    status["replicas"] = {
        "desired": targets.desired,
        "scheduled": len(workloads),
        "ready": sum(is_true(w.status, "Ready") for w in workloads),
    }
    status["endpoints"] = [
        w.status["endpoint"] for w in workloads if is_true(w.status, "Ready") and w.status.get("endpoint")
    ]
    url = _url(router, status["endpoints"], targets.desired) if owner.kind == "Deployment" else None
    if url:
        status["url"] = url
    else:
        status.pop("url", None)
    if owner.kind == "TrainingJob":
        progress = next((w.status["progress"] for w in workloads if w.status.get("progress")), None)
        if progress:
            status["progress"] = progress
    placed = [*workloads, router.workload] if router.workload is not None else workloads
    status["placements"] = [
        {"workload": w.name, "node": w.node_name, "gpus": w.spec.get("gpus", []), "role": w.spec.get("role")}
        for w in placed
    ]
    store.update_status(owner, status)


def _url(router: Router, endpoints: list[str], desired: int) -> str | None:
    """Where clients go (the module docstring's rule), or None while nowhere serves."""
    if router.wanted:
        return router.endpoint
    return endpoints[0] if desired == 1 and len(endpoints) == 1 else None


def _set_outcome(
    owner: Resource,
    status: dict[str, Any],
    workloads: list[Resource],
    targets: Targets,
    unschedulable: str | None,
    router: Router,
) -> None:
    """Scheduled, Ready and Progressing: finished, shown-only, or by the replicas (and the
    router) running."""
    plan = targets.plan
    if targets.succeeded:
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
        _set_conditions(owner, status, workloads, targets.desired, unschedulable, router)


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
    spec: OwnerSpec,
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
        workload = create_workload(
            owner,
            workload_name(owner, placement.role, index),
            placement,
            runtime="train" if role == "train" else "serve",
            config=runtime_config(owner),
            labels={REPLICA_LABEL: str(index)},
            executor=executors[cluster],
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
    router: Router,
) -> None:
    nodes = sorted({w.node_name for w in workloads})
    if unschedulable:
        if set_condition(status, "Scheduled", False, "Unschedulable", unschedulable):
            events.record(owner, "FailedScheduling", unschedulable, type_="Warning", source=SOURCE)
    else:
        where = f", router on {router.workload.node_name}" if router.workload is not None else ""
        set_condition(
            status,
            "Scheduled",
            True,
            "Placed",
            f"{len(workloads)} replicas on {len(nodes)} nodes{where}",
        )
    ready = sum(is_true(w.status, "Ready") for w in workloads)
    noun = "replicas serving" if owner.kind == "Deployment" else "replicas running"
    # Where there is a router, clients reach the replicas only through it.
    routed = "" if not router.wanted else (", router ready" if router.ready else ", router not ready")
    if desired == 0:
        set_condition(status, "Ready", True, "ScaledToZero", "0 replicas desired")
    elif ready >= desired and (router.ready or not router.wanted):
        set_condition(status, "Ready", True, "AllReplicasReady", f"{ready}/{desired} {noun}{routed}")
    else:
        reason = "Starting" if ready < desired else "RouterNotReady"
        set_condition(status, "Ready", False, reason, f"{ready}/{desired} {noun}{routed}")
    if unschedulable:
        progress = "WaitingForCapacity"
    elif ready < desired:
        progress = "WaitingForReplicas"
    else:
        progress = "WaitingForRouter" if router.wanted and not router.ready else "Converged"
    set_condition(
        status,
        "Progressing",
        progress != "Converged",
        progress,
        f"{len(workloads)}/{desired} scheduled, {ready}/{desired} ready{routed}",
    )
