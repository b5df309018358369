"""What each scheduler would do with a Deployment, for ``flotilla plan`` and the API's dry run.

Operators see the placement (GPU types, counts, nodes), the cost per hour and the
simulator's predicted TTFT/TPOT P90 and SLO attainment for every candidate policy
side by side, and which one the Deployment's own policy would choose, before they
apply (dstack and SkyPilot habits). Nothing is written: the schedulers work on a
private copy of the fleet snapshot.

The candidates are the registered schedulers (``plugins.manager.registry()``: the
built-ins first, in load order, then installed ones), so a plugin is previewed as
soon as it is installed. A scheduler that declares ``requires_disaggregation``
(distserve) is previewed only for Deployments with ``disaggregation: auto``.
"""

from __future__ import annotations

import copy
from typing import Any

from common.specs import DeploymentSpec
from controlplane import fleet, store
from controlplane.controllers.sizing import placement_request, scheduler_for
from controlplane.policies import PolicyProblem, resolve
from plugins import manager
from plugins.planning import PlanProblem, colocated_plan
from plugins.types import FleetView, SchedulePlan


class _Owner:
    """Just what ``placement_request`` reads from a stored owner."""

    kind = "Deployment"

    def __init__(self, name: str, observed: dict[str, Any] | None = None):
        self.name = name
        self.observed = observed  # the stored Deployment's status.observedWorkload, if any


def preview(name: str, spec_document: dict[str, Any]) -> dict[str, Any]:
    """Every candidate's plan for the Deployment ``name`` with ``spec_document``."""
    spec = DeploymentSpec.model_validate(spec_document)
    stored = store.find("Deployment", name)
    owner = _Owner(name, stored.status.get("observedWorkload") if stored else None)
    view = fleet.snapshot()
    # The Deployment's own GPUs count as free: the preview sizes it from scratch.
    for node in view.nodes:
        for gpu in node.gpus:
            if gpu.allocated_to == f"Deployment/{name}":
                gpu.allocated_to = None
    chosen = _chosen_policy(spec)
    plans = [_plan_one(policy, owner, spec, view) for policy in manager.registry()["scheduler"]]
    return {"chosen": chosen, "plans": [plan for plan in plans if plan is not None]}


def _chosen_policy(spec: DeploymentSpec) -> str | None:
    """The scheduler the owner controller would use; None when none resolves."""
    choice = scheduler_for(spec)
    return None if isinstance(choice, str) else choice[0].name


def _plan_one(policy: str, owner: _Owner, spec: DeploymentSpec, view: FleetView) -> dict[str, Any] | None:
    """The plan ``policy`` would make; None when it does not apply to this Deployment."""
    try:
        scheduler, params = resolve("scheduler", policy)
    except PolicyProblem as exc:
        return {"policy": policy, "problem": str(exc)}
    if getattr(scheduler, "requires_disaggregation", False) and spec.disaggregation != "auto":
        return None
    own = copy.deepcopy(view)
    request = placement_request(owner, spec, spec.replicas)
    request.observed = owner.observed
    try:
        if hasattr(scheduler, "plan") and (spec.workload.requestsPerSecond or spec.disaggregation == "auto"):
            plan = scheduler.plan(request=request, fleet=own, params=params)
        else:
            plan = colocated_plan(policy, scheduler, params, request, own)
    except PlanProblem as exc:
        return {"policy": policy, "problem": f"{exc}; {exc.field}: {exc.fix}"}
    document = plan.to_dict()
    if plan.supported:
        document["nodes"] = _nodes(plan, owner, spec, view, scheduler, params)
    return document


def _nodes(plan: SchedulePlan, owner: _Owner, spec: DeploymentSpec, view: FleetView, scheduler, params):
    """Where the plan's replicas would land: the scheduler's own ``place`` on a copy."""
    own = copy.deepcopy(view)
    where: list[dict[str, Any]] = []
    for gpu_type, count in sorted(plan.replicas.items()):
        request = placement_request(owner, spec, count, gpu_type)
        for placement in scheduler.place(request=request, fleet=own, params=params).placements:
            where.append({"node": placement.node, "gpus": placement.gpus, "gpuType": gpu_type})
    return where
