"""Which scheduler an owner uses, and a sizing plan made before the writers' lock.

Split out of the owner controller (``owners.py``) because the dry-run preview
(``controlplane/schedule_preview.py``) asks the same questions without placing
anything: which scheduler resolves for this spec, what ``PlacementRequest`` it gets
(its replicas', and its router's: ``routers.py``), and what a sizing scheduler (melange,
distserve) would plan.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from pydantic import BaseModel, ValidationError

from common.specs import DeploymentSpec, TrainingJobSpec
from controlplane import fleet, store
from controlplane.conditions import is_true
from controlplane.models import Resource
from controlplane.policies import PolicyProblem, resolve
from plugins.planning import PlanProblem
from plugins.types import FleetView, PlacementRequest, SchedulePlan

OwnerSpec = DeploymentSpec | TrainingJobSpec
# A scheduler plugin and its params, or why there is none (``scheduler_for``).
Choice = tuple[Any, BaseModel] | str


def role_of(kind: str) -> str:
    return "train" if kind == "TrainingJob" else "serve"


class Planned(NamedTuple):
    """A sizing plan made before the writers' lock was taken, valid while the owner
    (its resourceVersion) and its scheduler are unchanged."""

    resource_version: int
    scheduler: str
    plan: SchedulePlan | None
    problem: str | None
    # The snapshot the plan was made on, refreshed for placement (fleet.refresh).
    view: tuple[FleetView, fleet.Basis] | None = None


def plan_ahead(kind: str, name: str) -> Planned | None:
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

    plan, problem = sizing_plan(owner, spec, choice, owner.status, take_snapshot)
    return Planned(owner.resource_version, choice[0].name, plan, problem, views[-1] if views else None)


def scheduler_for(spec: OwnerSpec) -> Choice:
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
    owner: Resource, spec: OwnerSpec, replicas: int, gpu_type: str | None = None
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
        deployment=spec if isinstance(spec, DeploymentSpec) else None,
    )


def router_request(owner: Resource, spec: DeploymentSpec, role: str) -> PlacementRequest:
    """One router for ``owner``: a node in its cluster that matches its nodeSelector, and no
    GPU (so neither gpuTypes nor gpuMemoryGiB apply: they describe what a replica runs on)."""
    return PlacementRequest(
        owner_kind=owner.kind,
        owner_name=owner.name,
        replicas=1,
        gpus_per_replica=0,
        node_selector=dict(spec.resources.nodeSelector),
        cluster=spec.cluster,
        role=role,
    )


def sizing_plan(
    owner: Resource,
    spec: OwnerSpec,
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
