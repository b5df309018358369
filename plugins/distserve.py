"""Built-in scheduler ``distserve``: separate prefill and decode replicas, sized for goodput (DistServe).

Zhong et al. 2024 ("DistServe: Disaggregating Prefill and Decoding for
Goodput-optimized LLM Serving"): prefill is compute-bound and decides TTFT,
decode is memory-bound and decides TPOT; on shared GPUs each slows the other.
Placed apart, each phase gets its own GPU type, tensor-parallel degree and
count, and the fleet serves more requests per GPU within the SLO.

The search follows DistServe's Algorithm 1 on the serving simulator: for each
available GPU type and tensor-parallel degree, the goodput of one prefill-only
instance (TTFT target) and of one decode-only instance (TPOT target) is found by
bisection; for each (prefill config, decode config) pair the counts that carry
the declared rate follow, the pair is simulated end to end at that rate, and the
highest per-GPU goodput that meets the SLO wins (ties to fewer GPUs).

Until the serving runtime can hand a KV cache from a prefill Workload to a
decode Workload, the plan is shown (``status.plan``) and nothing is placed: the
Deployment gets ``Scheduled=False, reason=RuntimeUnsupported``. No silent
fallback to colocated replicas. With ``disaggregation: off`` it places like
``binpack``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from plugins.binpack import Binpack, BinpackParams
from plugins.hookspecs import hookimpl
from plugins.planning import (
    Demand,
    PlanProblem,
    demand_of,
    deployment_of,
    free_gpus_per_node,
    price_of,
    profile_for,
)
from plugins.sim import GpuProfile, Slo, goodput, judged_length, simulate, simulate_disaggregated, steady
from plugins.types import FleetView, PlacementRequest, PlacementResult, SchedulePlan

RUNTIME_UNSUPPORTED = (
    "the serving runtime cannot yet hand KV caches from prefill to decode Workloads; "
    "set disaggregation: off to run colocated replicas"
)
# Searches judge the second half of the trace (plugins.sim.steady): long enough for the
# batch and any queue to build up, as for melange's per-bucket rates.
REQUESTS_PER_SEARCH = 1000


class DistServeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tensorParallel: list[int] = Field(
        default=[1, 2, 4], min_length=1, max_length=4, description="tensor-parallel degrees to try per phase"
    )
    maxGpus: int = Field(default=512, ge=1, le=65536, description="largest plan considered, in GPUs")

    @field_validator("tensorParallel")
    @classmethod
    def _powers_of_two(cls, degrees: list[int]) -> list[int]:
        if any(d < 1 or d > 8 or d & (d - 1) for d in degrees):
            raise ValueError("tensor-parallel degrees must be 1, 2, 4 or 8")
        return sorted(set(degrees))


@dataclasses.dataclass(frozen=True)
class PhaseConfig:
    gpu_type: str
    tensor_parallel: int
    goodput: float  # requests/s one instance carries within its phase's target

    @property
    def per_gpu(self) -> float:
        return self.goodput / self.tensor_parallel


def _requests(demand: Demand, rate: float):
    """A search's trace at ``rate``: long enough to judge (plugins.sim.judged_length), else None."""
    mean_out = sum(f * p[1] for f, p in zip(demand.fractions, demand.points, strict=True))
    count = judged_length(rate, demand.slo, mean_out, minimum=REQUESTS_PER_SEARCH)
    return None if count is None else demand.requests(rate, count, seed=7)


# (profile, traffic, SLO, phase) -> goodput of one instance; the search repeats them across plans.
_PHASE_GOODPUT: dict[tuple, float] = {}


def phase_goodput(profile: GpuProfile, demand: Demand, phase: str) -> float:
    """Requests/s one prefill-only (TTFT target) or decode-only (TPOT target) instance carries.

    Prefill: simulated (a prefill-only instance with ample decode capacity behind
    it), bisecting on the TTFT target. Decode: the steady state in closed form -- the
    largest batch whose step time meets the TPOT target and whose KV cache fits,
    carried for the mean output length -- because a decode instance saturates only
    at hundreds of concurrent sequences, more than a short simulated trace holds.
    """
    key = (profile, tuple(demand.fractions), tuple(demand.points), demand.slo, phase)
    if key not in _PHASE_GOODPUT:
        if phase == "prefill":
            slo = Slo(demand.slo.ttft_ms, None)

            def run(requests):  # decode capacity made ample: only the prefill instance limits
                return simulate_disaggregated(requests, profile, profile, 1, 64)

            _PHASE_GOODPUT[key] = goodput(lambda rate: _requests(demand, rate), run, slo)
        else:
            _PHASE_GOODPUT[key] = decode_goodput(profile, demand)
    return _PHASE_GOODPUT[key]


def decode_goodput(profile: GpuProfile, demand: Demand) -> float:
    mean_in = sum(f * p[0] for f, p in zip(demand.fractions, demand.points, strict=True))
    mean_out = max(1.0, sum(f * p[1] for f, p in zip(demand.fractions, demand.points, strict=True)))
    target_ms = demand.slo.tpot_ms or math.inf
    for batch in range(profile.max_batch, 0, -1):
        if batch * (mean_in + mean_out) > profile.kv_capacity_tokens:
            continue
        step_ms = profile.decode_ms(batch, int(batch * (mean_in + mean_out / 2)))
        if step_ms <= target_ms:
            return batch / (mean_out * step_ms / 1000)
    return 0.0


def _finite_ms(seconds: float, digits: int) -> float | None:
    """Milliseconds for a status document: None where rejected requests make it infinite."""
    return round(seconds * 1000, digits) if math.isfinite(seconds) else None


def colocated_goodput(profile: GpuProfile, demand: Demand) -> float:
    """Goodput of one colocated replica (prefill and decode on the same GPUs), for comparison."""
    return goodput(
        lambda rate: _requests(demand, rate),
        lambda requests: simulate(requests, profile, instances=1),
        demand.slo,
    )


class DistServe:
    name: ClassVar[str] = "distserve"
    kind: ClassVar[str] = "scheduler"
    description: ClassVar[str] = (
        "Disaggregated prefill/decode sized for per-GPU goodput (DistServe); plan only until the runtime "
        "supports KV hand-off."
    )
    Params: ClassVar[type[BaseModel]] = DistServeParams
    # It sizes only Deployments with disaggregation: auto (a dry run previews it for those only).
    requires_disaggregation: ClassVar[bool] = True

    def plan(self, *, request: PlacementRequest, fleet: FleetView, params: BaseModel) -> SchedulePlan:
        assert isinstance(params, DistServeParams)
        deployment = deployment_of(request)
        if deployment.disaggregation != "auto":
            raise PlanProblem(
                "distserve plans disaggregated Deployments only",
                "spec.disaggregation",
                "set disaggregation: auto, or use binpack/melange for colocated replicas",
            )
        base = demand_of(deployment, 1, request.observed)
        if base.slo.ttft_ms is None or base.slo.tpot_ms is None:
            raise PlanProblem(
                "distserve sizes each phase by its own target and needs both",
                "spec.slo",
                "declare both slo.ttftMs (prefill) and slo.tpotMs (decode)",
            )
        # Per type: (free GPUs in all, most on one node -- which bounds tensor parallelism).
        free = {t: (sum(c), max(c)) for t, c in free_gpus_per_node(request, fleet).items()}
        phases: dict[str, list[PhaseConfig]] = {"prefill": [], "decode": []}
        profiles: dict[tuple[str, int], GpuProfile] = {}
        notes: list[str] = []
        for gpu_type, (_, widest) in sorted(free.items()):
            for tp in params.tensorParallel:
                if tp > widest:
                    continue
                demand = dataclasses.replace(base, tensor_parallel=tp)
                profile = profile_for(gpu_type, demand, fleet)
                if profile is None:
                    notes.append(f"{gpu_type}×{tp}: no profile, or the model does not fit")
                    continue
                profiles[(gpu_type, tp)] = profile
                for phase in phases:
                    rate = phase_goodput(profile, demand, phase)
                    if rate > 0:
                        phases[phase].append(PhaseConfig(gpu_type, tp, rate))
        if not phases["prefill"] or not phases["decode"]:
            missing = [p for p, configs in phases.items() if not configs]
            raise PlanProblem(
                f"no free GPU type meets the SLO for the {' and '.join(missing)} phase"
                + (f" ({'; '.join(notes)})" if notes else ""),
                "spec.slo",
                "relax the SLO, allow more gpuTypes, or add nodes",
            )
        best: tuple[tuple, dict] | None = None
        for p in sorted(phases["prefill"], key=lambda c: -c.per_gpu)[:3]:
            for d in sorted(phases["decode"], key=lambda c: -c.per_gpu)[:3]:
                candidate = self._size(base, p, d, free, profiles, params)
                if candidate is None:
                    continue
                key = (-candidate["goodputPerGpu"], candidate["gpus"])
                if best is None or key < best[0]:
                    best = (key, candidate)
        if best is None:
            raise PlanProblem(
                "no disaggregated plan fits the free GPUs at the declared rate",
                "spec.workload.requestsPerSecond",
                "lower the rate or add nodes",
            )
        chosen = best[1]
        cost = sum(
            role["instances"] * role["tensorParallel"] * price_of(role["gpuType"], fleet)[0]
            for role in chosen["roles"].values()
        )
        return SchedulePlan(
            policy=self.name,
            replicas={},
            cost_per_hour=cost,
            predicted={**chosen["predicted"], "goodputPerGpu": round(chosen["goodputPerGpu"], 4)},
            roles=chosen["roles"],
            supported=False,
            reason=RUNTIME_UNSUPPORTED,
            notes=[base.describe_source(), *notes, f"goodput per GPU {chosen['goodputPerGpu']:.3f} req/s"],
        )

    @staticmethod
    def _size(
        demand: Demand,
        prefill: PhaseConfig,
        decode: PhaseConfig,
        free: dict[str, tuple[int, int]],
        profiles: dict[tuple[str, int], GpuProfile],
        params: DistServeParams,
    ) -> dict | None:
        """Counts that carry the rate, grown until the end-to-end simulation meets the SLO."""
        n_p = max(1, math.ceil(demand.rate / prefill.goodput))
        n_d = max(1, math.ceil(demand.rate / decode.goodput))
        p_profile = profiles[(prefill.gpu_type, prefill.tensor_parallel)]
        d_profile = profiles[(decode.gpu_type, decode.tensor_parallel)]
        for _ in range(4):
            need: dict[str, int] = {}
            need[prefill.gpu_type] = n_p * prefill.tensor_parallel
            need[decode.gpu_type] = need.get(decode.gpu_type, 0) + n_d * decode.tensor_parallel
            gpus = sum(need.values())
            if gpus > params.maxGpus or any(n > free[t][0] for t, n in need.items()):
                return None
            count = min(4000, max(REQUESTS_PER_SEARCH, 250 * (n_p + n_d)))
            result = steady(
                simulate_disaggregated(
                    demand.requests(demand.rate, count, seed=11), p_profile, d_profile, n_p, n_d
                )
            )
            attainment = result.attainment(demand.slo.ttft_ms, demand.slo.tpot_ms)
            ttft_ok = result.attainment(demand.slo.ttft_ms, None) >= demand.slo.attainment
            if attainment >= demand.slo.attainment:
                carried = min(n_p * prefill.goodput, n_d * decode.goodput)
                return {
                    "gpus": gpus,
                    "goodputPerGpu": carried / gpus,
                    "roles": {
                        "prefill": {
                            "gpuType": prefill.gpu_type,
                            "tensorParallel": prefill.tensor_parallel,
                            "instances": n_p,
                            "gpus": n_p * prefill.tensor_parallel,
                        },
                        "decode": {
                            "gpuType": decode.gpu_type,
                            "tensorParallel": decode.tensor_parallel,
                            "instances": n_d,
                            "gpus": n_d * decode.tensor_parallel,
                        },
                    },
                    "predicted": {
                        "sloAttainment": round(attainment, 4),
                        "ttftP90Ms": _finite_ms(result.percentile("ttft", 90), 2),
                        "tpotP90Ms": _finite_ms(result.percentile("tpot", 90), 3),
                        "simulatedRequests": count,
                    },
                }
            if ttft_ok:
                n_d += max(1, n_d // 4)
            else:
                n_p += max(1, n_p // 4)
        return None

    def place(self, *, request: PlacementRequest, fleet: FleetView, params: BaseModel) -> PlacementResult:
        """Colocated replicas (``disaggregation: off``) are packed as ``binpack`` packs them."""
        return Binpack().place(request=request, fleet=fleet, params=BinpackParams())


@hookimpl
def register_schedulers():
    return [DistServe()]
