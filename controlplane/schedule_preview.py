"""What each scheduler would do with a Deployment, for ``flotilla plan`` and the API's dry run.

Operators see the placement (GPU types, counts, nodes), the cost per hour and the
simulator's predicted TTFT/TPOT P90 and SLO attainment for every candidate policy
side by side, and which one the Deployment's own policy would choose, before they
apply (dstack and SkyPilot habits). Nothing is written: the schedulers work on a
private copy of the fleet snapshot.
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

from controlplane import fleet
from controlplane.controllers.owners import placement_request
from controlplane.models import Resource
from controlplane.policies import PolicyProblem, resolve
from controlplane.specs import DeploymentSpec
from plugins.planning import PlanProblem, demand_of, predict, price_of, profile_for
from plugins.types import FleetView, SchedulePlan

CANDIDATES = ("binpack", "spread", "melange", "distserve")


class _Owner:
    """Just what ``placement_request`` reads from a stored owner."""

    kind = "Deployment"

    def __init__(self, name: str, spec: dict[str, Any]):
        self.name = name
        self.spec = spec


def preview(name: str, spec_document: dict[str, Any]) -> dict[str, Any]:
    """Every candidate's plan for the Deployment ``name`` with ``spec_document``."""
    spec = DeploymentSpec.model_validate(spec_document)
    owner = _Owner(name, spec_document)
    view = fleet.snapshot()
    # The Deployment's own GPUs count as free: the preview sizes it from scratch.
    for node in view.nodes:
        for gpu in node.gpus:
            if gpu.allocated_to == f"Deployment/{name}":
                gpu.allocated_to = None
    chosen = _chosen_policy(spec)
    plans = []
    for policy in CANDIDATES:
        if policy == "distserve" and spec.disaggregation != "auto":
            continue
        plans.append(_plan_one(policy, owner, spec, view))
    return {"chosen": chosen, "plans": plans}


def _chosen_policy(spec: DeploymentSpec) -> str | None:
    cluster = Resource.objects.filter(kind="Cluster", name=spec.cluster).first() if spec.cluster else None
    name = spec.policies.scheduler or ((cluster.spec if cluster else {}).get("policies") or {}).get(
        "scheduler"
    )
    try:
        scheduler, _ = resolve("scheduler", name)
    except PolicyProblem:
        return name
    return scheduler.name


def _plan_one(policy: str, owner: _Owner, spec: DeploymentSpec, view: FleetView) -> dict[str, Any]:
    try:
        scheduler, params = resolve("scheduler", policy)
    except PolicyProblem as exc:
        return {"policy": policy, "problem": str(exc)}
    own = copy.deepcopy(view)
    request = placement_request(owner, spec, spec.replicas)
    try:
        if hasattr(scheduler, "plan") and (spec.workload.requestsPerSecond or spec.disaggregation == "auto"):
            plan = scheduler.plan(request=request, fleet=own, params=params)
        else:
            plan = _colocated_plan(policy, request, own, scheduler, params)
    except PlanProblem as exc:
        return {"policy": policy, "problem": f"{exc}; {exc.field}: {exc.fix}"}
    document = plan.to_dict()
    if plan.supported:
        document["nodes"] = _nodes(plan, owner, spec, view, scheduler, params)
    return document


def _colocated_plan(policy: str, request, view: FleetView, scheduler, params) -> SchedulePlan:
    """A fixed replica count placed by ``policy``; predicted when the spec allows it."""
    result = scheduler.place(request=request, fleet=view, params=params)
    types: Counter[str] = Counter()
    for placement in result.placements:
        node = view.node(placement.node)
        gpu = next(g for g in node.gpus if g.index == placement.gpus[0])
        types[gpu.type] += 1
    cost = sum(n * request.gpus_per_replica * price_of(t, view)[0] for t, n in types.items())
    plan = SchedulePlan(policy=policy, replicas=dict(types), gpus_per_replica=request.gpus_per_replica)
    plan.cost_per_hour = cost
    plan.shortfall = result.unschedulable
    try:
        demand = demand_of(request.spec, request.gpus_per_replica)
    except PlanProblem as exc:
        plan.notes.append(f"no prediction: {exc} ({exc.field})")
        return plan
    profiles = {t: p for t in types if (p := profile_for(t, demand, view)) is not None}
    plan.predicted = predict(demand, dict(types), profiles).to_dict()
    return plan


def _nodes(plan: SchedulePlan, owner: _Owner, spec: DeploymentSpec, view: FleetView, scheduler, params):
    """Where the plan's replicas would land: the scheduler's own ``place`` on a copy."""
    own = copy.deepcopy(view)
    where: list[dict[str, Any]] = []
    for gpu_type, count in sorted(plan.replicas.items()):
        request = placement_request(owner, spec, count, gpu_type)
        for placement in scheduler.place(request=request, fleet=own, params=params).placements:
            where.append({"node": placement.node, "gpus": placement.gpus, "gpuType": gpu_type})
    return where
