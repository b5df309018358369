"""What the sizing schedulers share: a Deployment's demand, profiles, and simulated predictions.

Pure Python on plain data (the validated ``DeploymentSpec``, a ``FleetView``), so the
melange and distserve plugins, ``flotilla plan`` and the scheduler benchmark
compute the same numbers the same way.

Profiles: a stored ``measured`` Profile (``FleetView.profiles``) for the GPU type,
model shape and tensor-parallel degree wins; otherwise the simulator's roofline
``estimated`` profile; a type with neither cannot be planned for and is named in
the plan's notes.

Prefix caching: a Deployment whose cache policy reuses prefixes and that declares
``spec.workload.sharedPrefixTokens`` is simulated with a prefix cache on every replica
and that many leading prompt tokens shared by all its requests, so the prediction counts
them as hits once a replica holds them.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from common.problems import Problem
from common.specs import DeploymentSpec, ServingWorkload
from plugins.binpack import gpu_matches, node_eligible
from plugins.caches import builtin_caches
from plugins.sim import (
    HARDWARE,
    Buckets,
    GpuProfile,
    ModelShape,
    PrefixCache,
    Request,
    RequestResult,
    SimResult,
    Slo,
    estimate,
    max_rate,
    shared_prefix_hashes,
    simulate,
    steady,
)
from plugins.types import FleetView, PlacementRequest, SchedulePlan

# Simulating every replica of a large Deployment costs time for little accuracy: a
# type's replicas behind a least-loaded dispatcher are simulated as at most this many
# instances with their share of the traffic (slightly pessimistic: less multiplexing).
MAX_SIMULATED_INSTANCES = 4
# Per simulated instance: predictions are judged on the second half of the trace
# (``plugins.sim.steady``), which must be long enough for a replica's batch and any
# queue to build up -- with 150 requests, a type loaded past its capacity still looked
# fine because its queue had no time to grow. Near capacity that takes about 1,000
# requests; a lightly loaded replica reaches its steady state within a minute of
# traffic, so it is simulated for that long (at least 200 requests).
REQUESTS_PER_INSTANCE = 1000
MIN_REQUESTS_PER_INSTANCE = 200
SIMULATED_SECONDS = 60.0
# The KV block size every profile uses (GpuProfile.block_size's default, the engine's).
BLOCK_SIZE = 16


class PlanProblem(Problem):
    """The Deployment cannot be planned as written; ``field`` and ``fix`` say what to change."""

    def __init__(self, message: str, field: str, fix: str):
        super().__init__(message, field, fix)


@dataclass
class Demand:
    """A Deployment's traffic, SLO and model, as the simulator needs them."""

    rate: float
    buckets: Buckets
    fractions: list[float]
    slo: Slo
    shape: ModelShape
    tensor_parallel: int = 1
    # The (input, output) lengths simulated for each bucket: the declared lengths when
    # the spec gives one pair, else each bucket's representative.
    points: list[tuple[int, int]] = field(default_factory=list)
    # Where the lengths came from: "declared" (the spec), "observed" (measured from the
    # Deployment's live traffic: status.observedWorkload) or "default" (512 in, 128 out);
    # and where the rate came from: "declared" or "observed".
    source: str = "declared"
    rate_source: str = "declared"
    # Leading prompt tokens every request shares, counted as prefix-cache hits (0: no reuse).
    shared_prefix_tokens: int = 0

    def __post_init__(self) -> None:
        if not self.points:
            self.points = [self.buckets.representative(b) for b in range(len(self.fractions))]

    def describe_source(self) -> str:
        """One line for a plan's notes: what the plan was sized for, and where that came from."""
        lengths = {
            "declared": "lengths declared in spec.workload",
            "observed": "lengths measured from live traffic (status.observedWorkload)",
            "default": "default lengths (512 in, 128 out)",
        }.get(self.source, self.source)
        shared = (
            f"; {self.shared_prefix_tokens} shared prefix tokens as cache hits"
            if self.shared_prefix_tokens
            else ""
        )
        return f"workload: {self.rate:g} req/s {self.rate_source}; {lengths}{shared}"

    @property
    def prefix_cache(self) -> PrefixCache | None:
        """The cache every simulated replica keeps: plain LRU (these requests are not sessions)."""
        return PrefixCache() if self.shared_prefix_tokens else None

    def requests(
        self, rate: float, count: int, seed: int = 0, weights: list[float] | None = None
    ) -> list[Request]:
        """Poisson arrivals at ``rate``, lengths drawn from the histogram (or from ``weights``
        per bucket, e.g. the slice of it one GPU type serves)."""
        rng = random.Random(seed)
        weights = weights or self.fractions
        at, out = 0.0, []
        for i in range(count):
            at += rng.expovariate(rate)
            bucket = rng.choices(range(len(weights)), weights=weights)[0]
            input_tokens, output_tokens = self.points[bucket]
            names = ()
            if self.shared_prefix_tokens:
                names = shared_prefix_hashes(self.shared_prefix_tokens, input_tokens, BLOCK_SIZE, i)
            out.append(Request(i, at, input_tokens, output_tokens, names))
        return out


def deployment_of(request: PlacementRequest) -> DeploymentSpec:
    """The Deployment a request is for; PlanProblem for any other owner (nothing to size)."""
    if request.deployment is None:
        raise PlanProblem(
            f"a {request.owner_kind} has no serving workload to size",
            "kind",
            "size Deployments; place other owners with a scheduler that only chooses nodes",
        )
    return request.deployment


def demand_of(
    deployment: DeploymentSpec,
    gpus_per_replica: int = 1,
    observed: dict[str, Any] | None = None,
    reuses_prefixes: bool | None = None,
) -> Demand:
    """The Demand a validated Deployment spec declares; PlanProblem names what is missing.

    ``reuses_prefixes``: whether the Deployment's cache policy reuses prefixes, from a
    caller that resolved it; None judges by :func:`cache_reuses_prefixes`.

    ``observed`` is the Deployment's ``status.observedWorkload`` (measured from its live
    traffic by ``controlplane.observed_traffic``). What the spec declares always wins;
    the measurement fills in what it leaves out: the rate when none is declared, and the
    length histogram when the spec declares no lengths at all (neither a histogram nor
    inputTokens/outputTokens). Only then the default lengths, 512 in and 128 out.
    """
    workload, slo = deployment.workload, deployment.slo
    observed = observed if isinstance(observed, dict) else {}
    rate, rate_source = _rate(workload.requestsPerSecond, observed.get("requestsPerSecond"))
    if not slo.ttftMs and not slo.tpotMs:
        raise PlanProblem(
            "no latency target to size for",
            "spec.slo",
            "declare slo.ttftMs and/or slo.tpotMs (milliseconds), e.g. slo: {ttftMs: 500, tpotMs: 50}",
        )
    buckets, fractions, points, source = _lengths(workload, observed.get("histogram"))
    try:
        shape = ModelShape.from_config(deployment.model.config)
    except ValueError as exc:
        raise PlanProblem(str(exc), "spec.model.config", "use the runtime's config keys") from None
    if reuses_prefixes is None:
        reuses_prefixes = cache_reuses_prefixes(deployment)
    return Demand(
        rate=rate,
        buckets=buckets,
        fractions=fractions,
        slo=Slo(slo.ttftMs, slo.tpotMs),
        shape=shape,
        tensor_parallel=gpus_per_replica,
        points=points,
        source=source,
        rate_source=rate_source,
        shared_prefix_tokens=(workload.sharedPrefixTokens or 0) if reuses_prefixes else 0,
    )


def cache_reuses_prefixes(deployment: DeploymentSpec) -> bool:
    """Whether ``spec.policies.cache`` keeps prefixes: no cache policy reuses nothing; a
    built-in cache plugin answers with its default parameters; any other name (a Policy,
    whose parameters only the control plane can read, or an installed plugin) is taken to
    reuse them -- pass ``reuses_prefixes`` to :func:`demand_of` to say otherwise."""
    name = deployment.policies.cache  # type: ignore[attr-defined]
    if not name:
        return False
    for cache in builtin_caches():
        if cache.name == name:
            return cache.reuses_prefixes(params=cache.Params())
    return True


def _rate(declared: float | None, measured: Any) -> tuple[float, str]:
    """The rate to size for and where it came from: declared, else a sane measured one."""
    if declared:
        return float(declared), "declared"
    if (
        isinstance(measured, int | float)
        and not isinstance(measured, bool)
        and math.isfinite(measured)
        and measured > 0
    ):
        return float(measured), "observed"
    raise PlanProblem(
        "no request rate to size for",
        "spec.workload.requestsPerSecond",
        "declare the expected requests per second, e.g. workload: {requestsPerSecond: 20}",
    )


def _lengths(
    workload: ServingWorkload, measured: Any
) -> tuple[Buckets, list[float], list[tuple[int, int]], str]:
    """(buckets, fractions, points, source): the declared histogram or pair of lengths,
    else the measured histogram, else the defaults (512 in, 128 out)."""
    if workload.histogram is not None:
        histogram = workload.histogram
        buckets = Buckets(list(histogram.inputEdges), list(histogram.outputEdges))
        return buckets, [value for row in histogram.fractions for value in row], [], "declared"
    source = "declared"
    if not workload.inputTokens and not workload.outputTokens:
        observed = _measured_histogram(measured)
        if observed is not None:
            return *observed, [], "observed"
        source = "default"
    input_tokens, output_tokens = workload.inputTokens or 512, workload.outputTokens or 128
    return Buckets([input_tokens], [output_tokens]), [1.0], [(input_tokens, output_tokens)], source


def _measured_histogram(measured: Any) -> tuple[Buckets, list[float]] | None:
    """status.observedWorkload.histogram as buckets and normalised fractions; None when there
    is none yet, or a status written by hand holds something that is not a histogram."""
    try:
        buckets = Buckets(list(measured["inputEdges"]), list(measured["outputEdges"]))
        fractions = [float(value) for row in measured["fractions"] for value in row]
    except (KeyError, TypeError, ValueError):
        return None
    total = sum(fractions)
    if len(fractions) != buckets.size or min(fractions) < 0 or not 0 < total < math.inf:
        return None
    return buckets, [value / total for value in fractions]


def profile_for(gpu_type: str, demand: Demand, fleet: FleetView) -> GpuProfile | None:
    """The measured profile when one is stored, else the roofline estimate, else None."""
    for stored in fleet.profiles:
        if (
            stored.get("gpuType") == gpu_type
            and stored.get("model") == demand.shape.key
            and int(stored.get("tensorParallel", 1)) == demand.tensor_parallel
        ):
            known = {k: v for k, v in stored.items() if k not in ("measuredOn", "fitErrorPercent")}
            return GpuProfile.from_dict(known)
    if gpu_type not in HARDWARE:
        return None
    try:
        return estimate(gpu_type, demand.shape, tensor_parallel=demand.tensor_parallel)
    except ValueError:
        return None  # the model does not fit this type at this tensor-parallel degree


def price_of(gpu_type: str, fleet: FleetView) -> tuple[float, bool]:
    """(price per GPU-hour, whether it was estimated rather than taken from a Cluster)."""
    if gpu_type in fleet.prices:
        return float(fleet.prices[gpu_type]), False
    hardware = HARDWARE.get(gpu_type)
    return (hardware.price_per_hour if hardware else 0.0), True


def free_gpus_per_node(request: PlacementRequest, fleet: FleetView) -> dict[str, list[int]]:
    """For each GPU type, how many GPUs the request may use on each eligible node.

    GPUs this owner already holds count as free: a plan re-sizes the whole
    Deployment, and its own replicas are what it would keep first.
    """
    owner = f"{request.owner_kind}/{request.owner_name}"
    per_type: dict[str, list[int]] = {}
    # Once per GPU of the fleet (10,000 at scale): the checks are inlined.
    types = set(request.gpu_types)
    sized = bool(request.gpu_memory_gib)
    for node in fleet.nodes:
        if not node_eligible(node, request):
            continue
        usable: dict[str, int] = {}
        for gpu in node.gpus:
            if (
                gpu.healthy
                and (gpu.allocated_to is None or gpu.allocated_to == owner)
                and (not types or gpu.type in types)
                and (not sized or gpu_matches(gpu, request))
            ):
                usable[gpu.type] = usable.get(gpu.type, 0) + 1
        for gpu_type, count in usable.items():
            per_type.setdefault(gpu_type, []).append(count)
    return per_type


def free_replicas_by_type(request: PlacementRequest, fleet: FleetView) -> dict[str, int]:
    """How many replicas of each GPU type the eligible nodes could take (a replica never spans nodes)."""
    return {
        gpu_type: sum(count // request.gpus_per_replica for count in counts)
        for gpu_type, counts in free_gpus_per_node(request, fleet).items()
    }


@dataclass
class Prediction:
    attainment: float
    ttft_p90_ms: float
    tpot_p90_ms: float
    simulated_requests: int
    per_type: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: a latency nothing was measured for (no replica) is None, not inf."""

        def finite(value: float, digits: int) -> float | None:
            return round(value, digits) if math.isfinite(value) else None

        return {
            "sloAttainment": round(self.attainment, 4),
            "ttftP90Ms": finite(self.ttft_p90_ms, 2),
            "tpotP90Ms": finite(self.tpot_p90_ms, 3),
            "simulatedRequests": self.simulated_requests,
        }


def _p90(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]


def predict(
    demand: Demand,
    replicas: dict[str, int],
    profiles: dict[str, GpuProfile],
    routing: dict[str, list[float]] | None = None,
    seed: int = 0,
) -> Prediction:
    """Simulate ``demand`` served by ``replicas`` (type → count).

    ``routing`` gives, per type, the share of each bucket's traffic it serves (a
    Mélange assignment); without it a request goes to a type in proportion to that
    type's capacity for the Deployment's traffic. Requests no replica can take
    count as misses. Attainment and latencies are those of the steady state (the
    second half of each type's trace), as for the per-bucket rates the plan used.
    """
    active = {t: n for t, n in replicas.items() if n > 0 and t in profiles}
    if not active:
        return Prediction(0.0, math.inf, math.inf, 0)
    if routing is None:
        weights = {t: n * max(capacity(profiles[t], demand), 1e-9) for t, n in active.items()}
        total = sum(weights.values())
        routing = {t: [w / total] * len(demand.fractions) for t, w in weights.items()}
    per_type_share = {
        t: sum(f * s for f, s in zip(demand.fractions, routing.get(t, []), strict=False)) for t in active
    }
    results: list[RequestResult] = []
    per_type: dict[str, dict[str, float]] = {}
    unserved = max(0.0, 1.0 - sum(per_type_share.values()))
    simulated = 0
    for index, (gpu_type, count) in enumerate(sorted(active.items())):
        share = per_type_share[gpu_type]
        if share <= 0:
            continue
        instances = min(count, MAX_SIMULATED_INSTANCES)
        rate = demand.rate * share * instances / count
        per_instance = math.ceil(rate / instances * SIMULATED_SECONDS)
        n = instances * min(REQUESTS_PER_INSTANCE, max(MIN_REQUESTS_PER_INSTANCE, per_instance))
        # Lengths drawn from this type's slice of the histogram.
        weights = [f * s for f, s in zip(demand.fractions, routing[gpu_type], strict=False)]
        stream = demand.requests(rate, n, seed=seed + index, weights=weights)
        outcome = steady(simulate(stream, profiles[gpu_type], instances=instances, cache=demand.prefix_cache))
        results += outcome.requests
        simulated += n
        per_type[gpu_type] = {
            "share": round(share, 4),
            "sloAttainment": round(outcome.attainment(demand.slo.ttft_ms, demand.slo.tpot_ms), 4),
        }
    merged = SimResult(results, max((r.arrival_s for r in results), default=0.0), sum(active.values()))
    attainment = merged.attainment(demand.slo.ttft_ms, demand.slo.tpot_ms) * (1 - unserved)
    served = [r for r in results if not r.rejected]
    return Prediction(
        attainment=attainment,
        ttft_p90_ms=_p90([r.ttft_s * 1000 for r in served]),
        tpot_p90_ms=_p90([r.tpot_s * 1000 for r in served]),
        simulated_requests=simulated,
        per_type=per_type,
    )


def colocated_plan(
    policy: str, scheduler: Any, params: Any, request: PlacementRequest, fleet: FleetView
) -> SchedulePlan:
    """``request.replicas`` placed by a node-choosing scheduler (binpack, spread), as a plan.

    Marks the GPUs taken in ``fleet`` (pass a copy). Predicted only for a Deployment
    that declares a rate and an SLO; otherwise the notes say why not.
    """
    result = scheduler.place(request=request, fleet=fleet, params=params)
    types: Counter[str] = Counter()
    for placement in result.placements:
        node = fleet.node(placement.node)
        gpu = next(g for g in node.gpus if g.index == placement.gpus[0])
        types[gpu.type] += 1
    plan = SchedulePlan(
        policy=policy,
        replicas=dict(types),
        gpus_per_replica=request.gpus_per_replica,
        cost_per_hour=sum(n * request.gpus_per_replica * price_of(t, fleet)[0] for t, n in types.items()),
        shortfall=result.unschedulable,
    )
    try:
        demand = demand_of(deployment_of(request), request.gpus_per_replica)
    except PlanProblem as exc:
        plan.notes.append(f"no prediction: {exc} ({exc.field})")
        return plan
    profiles = {t: p for t in types if (p := profile_for(t, demand, fleet)) is not None}
    plan.predicted = predict(demand, dict(types), profiles).to_dict()
    return plan


def capacity(profile: GpuProfile, demand: Demand) -> float:
    """Requests/s one replica sustains at the SLO on the Deployment's traffic mix.

    The harmonic combination of per-bucket maxima: a replica spending share f_b of
    its requests in bucket b is busy Σ f_b / max_b seconds per request.
    """
    busy = 0.0
    for bucket, fraction in enumerate(demand.fractions):
        if fraction <= 0:
            continue
        best = bucket_rate(profile, demand, bucket)
        if best <= 0:
            return 0.0
        busy += fraction / best
    return 1.0 / busy if busy else 0.0


def bucket_rate(profile: GpuProfile, demand: Demand, bucket: int) -> float:
    """Mélange's per-bucket input: the highest rate one replica sustains at the SLO."""
    input_tokens, output_tokens = demand.points[bucket]
    return max_rate(profile, input_tokens, output_tokens, demand.slo)
