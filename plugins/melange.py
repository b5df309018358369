"""Built-in scheduler ``melange``: the cheapest mix of GPU types that meets the SLO (Mélange).

Griggs et al. 2024 ("Mélange: Cost Efficient LLM Serving by Exploiting GPU
Heterogeneity"): small requests are cheapest on small GPUs, long ones on big
GPUs, so a mix beats any single type. The Deployment's traffic is a histogram
over (input × output length) buckets; each GPU type's maximum request rate per
bucket at the SLO comes from the serving simulator on that type's profile; the
integer program in ``plugins.mixsolver`` assigns bucket slices to types and
minimises cost per hour.

Beyond the paper: counts are bounded by what is actually free in the fleet (a
partial mix is placed, and the plan says what is missing), optionally by the
cluster's power budget, and the replicas are then packed onto concrete nodes and
GPU indices (best fit, as ``binpack``).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from plugins.binpack import Binpack, BinpackParams
from plugins.hookspecs import hookimpl
from plugins.mixsolver import GpuOption, MixError, MixProblem, MixSolution, solve
from plugins.planning import (
    Demand,
    PlanProblem,
    bucket_rate,
    demand_of,
    deployment_of,
    free_replicas_by_type,
    predict,
    price_of,
    profile_for,
)
from plugins.sim import HARDWARE
from plugins.sim.profiles import POWER_AT_LOAD
from plugins.types import FleetView, PlacementRequest, PlacementResult, SchedulePlan

# Rates a mix is sized for, in turn, until its simulation meets the SLO (see ``plan``).
HEADROOM = (1.0, 1.1, 1.25, 1.5, 2.0)


class MelangeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sliceFactor: int = Field(
        default=4, ge=1, le=16, description="slices per bucket (finer: closer to optimal)"
    )
    timeLimitSeconds: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="MILP time limit; the best mix found so far (or greedy) after it",
    )
    usePowerBudget: bool = Field(
        default=True, description="keep the mix's draw within the cluster's powerBudgetWatts, when set"
    )
    onlyFree: bool = Field(
        default=True, description="bound counts by the GPUs free in the fleet (false: plan as if buying)"
    )


def _power_headroom(fleet: FleetView, owner: str) -> float | None:
    """The budget minus what other owners' GPUs draw at load (estimated per type)."""
    if fleet.power_budget_watts is None:
        return None
    drawn = 0.0
    for node in fleet.nodes:
        for gpu in node.gpus:
            if gpu.allocated_to and gpu.allocated_to != owner:
                hardware = HARDWARE.get(gpu.type)
                drawn += POWER_AT_LOAD * hardware.tdp_watts if hardware else 0.0
    return max(0.0, fleet.power_budget_watts - drawn)


class Melange:
    name: ClassVar[str] = "melange"
    kind: ClassVar[str] = "scheduler"
    description: ClassVar[str] = (
        "Cheapest GPU-type mix meeting the SLO (Mélange ILP), then packed onto nodes."
    )
    Params: ClassVar[type[BaseModel]] = MelangeParams

    def plan(self, *, request: PlacementRequest, fleet: FleetView, params: BaseModel) -> SchedulePlan:
        assert isinstance(params, MelangeParams)
        demand = demand_of(deployment_of(request), request.gpus_per_replica, request.observed)
        free = free_replicas_by_type(request, fleet)
        candidates = set(request.gpu_types) if request.gpu_types else set(free)
        if not params.onlyFree:
            candidates |= {t for t in fleet.prices}
        notes: list[str] = []
        options, profiles = [], {}
        for gpu_type in sorted(candidates):
            profile = profile_for(gpu_type, demand, fleet)
            if profile is None:
                notes.append(f"{gpu_type}: no profile and no built-in estimate, or the model does not fit")
                continue
            rates = tuple(
                bucket_rate(profile, demand, b) if f > 0 else 0.0 for b, f in enumerate(demand.fractions)
            )
            if not any(rates):
                notes.append(f"{gpu_type}: cannot meet the SLO on any bucket")
                continue
            price, estimated = price_of(gpu_type, fleet)
            if estimated:
                notes.append(
                    f"{gpu_type}: no price in a Cluster's gpuPrices; using the estimate ${price:.2f}/h"
                )
            profiles[gpu_type] = profile
            options.append(
                GpuOption(
                    name=gpu_type,
                    price_per_hour=price * request.gpus_per_replica,
                    max_rps=rates,
                    available=free.get(gpu_type, 0) if params.onlyFree else None,
                    power_watts=profile.power_watts * request.gpus_per_replica,
                )
            )
        if not options:
            raise PlanProblem(
                "no GPU type can serve this Deployment at its SLO: " + "; ".join(notes or ["no free GPUs"]),
                "spec.slo",
                "relax the SLO, allow more gpuTypes, or add nodes",
            )
        owner = f"{request.owner_kind}/{request.owner_name}"
        budget = _power_headroom(fleet, owner) if params.usePowerBudget else None
        problem = MixProblem(
            gpus=tuple(options),
            distribution=tuple(demand.fractions),
            requests_per_second=demand.rate,
            slice_factor=params.sliceFactor,
            power_budget_watts=budget,
        )
        # The integer program packs per-bucket loads up to whole replicas, as the paper
        # does; a replica mixing buckets at full load misses the SLO in the (steady-state)
        # simulation. So each mix is simulated, and one that misses is re-solved for a
        # higher rate until it meets the target -- or the fleet has no GPUs for more.
        chosen = None
        for margin in HEADROOM:
            try:
                solution = self._solve(
                    dataclasses.replace(problem, requests_per_second=demand.rate * margin), params
                )
            except MixError as exc:
                raise PlanProblem(str(exc), "spec.workload", exc.fix) from None
            if chosen is not None and solution.shortfall:
                break  # no free GPUs for more headroom: keep the last complete mix
            replicas = {t: n for t, n in solution.counts.items() if n > 0}
            routing = self._routing(solution, demand, margin, profiles)
            prediction = predict(demand, replicas, profiles, routing)
            chosen = (margin, solution, replicas, prediction)
            if solution.shortfall or prediction.attainment >= demand.slo.attainment:
                break
        assert chosen is not None
        margin, solution, replicas, prediction = chosen
        if margin > 1:
            notes.append(
                f"sized for {margin:g}x the rate: packed to exactly the rate, the mix missed the SLO "
                "in simulation"
            )
        if not solution.shortfall and prediction.attainment < demand.slo.attainment:
            notes.append(
                f"predicted SLO attainment {prediction.attainment:.0%} is below the "
                f"{demand.slo.attainment:.0%} target even with {margin:g}x headroom"
            )
        notes.append(f"solver: {solution.solver}{' (optimal)' if solution.optimal else ''}")
        return SchedulePlan(
            policy=self.name,
            replicas=replicas,
            gpus_per_replica=request.gpus_per_replica,
            cost_per_hour=solution.cost_per_hour,
            predicted={**prediction.to_dict(), **({"powerWatts": solution.power_watts} if budget else {})},
            shortfall=solution.shortfall,
            notes=[demand.describe_source(), *notes],
        )

    @staticmethod
    def _solve(problem: MixProblem, params: MelangeParams) -> MixSolution:
        solution = solve(problem, time_limit_s=params.timeLimitSeconds)
        # Short of GPUs, coarse slices may not fit the few there are (a slice is a
        # fixed share of a bucket): finer slices let the partial mix serve more.
        factor = params.sliceFactor
        while solution.shortfall and factor < 64:
            factor *= 4
            finer = solve(dataclasses.replace(problem, slice_factor=factor), params.timeLimitSeconds)
            if finer.served_rps > solution.served_rps + 1e-9:
                solution = finer
        return solution

    @staticmethod
    def _routing(
        solution: MixSolution, demand: Demand, margin: float, profiles: dict
    ) -> dict[str, list[float]]:
        """Each type's share of each bucket's traffic, from the slices it was assigned."""
        routing: dict[str, list[float]] = {t: [0.0] * len(demand.fractions) for t in profiles}
        for part in solution.assignment:
            bucket_rate_total = demand.rate * margin * demand.fractions[part.bucket]
            routing[part.gpu][part.bucket] += part.requests_per_second / bucket_rate_total
        return routing

    def place(self, *, request: PlacementRequest, fleet: FleetView, params: BaseModel) -> PlacementResult:
        """Pack replicas best-fit, as ``binpack`` does.

        The controller calls this once per GPU type of the plan (``request.gpu_types``
        names that type), and without a plan (no workload rate declared) for plain
        replicas.
        """
        return Binpack().place(request=request, fleet=fleet, params=BinpackParams())


@hookimpl
def register_schedulers():
    return [Melange()]
