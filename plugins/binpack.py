"""Built-in scheduler ``binpack``: best fit by free GPU memory.

Each replica goes on the eligible node whose free GPU memory is smallest but
still enough, so large holes stay open for large replicas. A replica never
spans nodes. Honours ``gpuTypes``, ``gpusPerReplica``, ``gpuMemoryGiB``, the
node selector, the cluster, readiness and cordons.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from plugins.hookspecs import hookimpl
from plugins.types import FleetView, Gpu, NodeView, Placement, PlacementRequest, PlacementResult

MIB_PER_GIB = 1024


class BinpackParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    spread: bool = Field(
        default=False,
        description="Prefer the node with the most free memory instead (worst fit), "
        "spreading replicas for failure isolation.",
    )


def gpu_matches(gpu: Gpu, request: PlacementRequest) -> bool:
    if request.gpu_types and gpu.type not in request.gpu_types:
        return False
    # Compared with the nominal size (rounded to whole GiB): an "80 GB" H100 reports
    # 81559 MiB (79.6 GiB) usable and must still satisfy gpuMemoryGiB: 80.
    if request.gpu_memory_gib and round(gpu.memory_mib / MIB_PER_GIB) < request.gpu_memory_gib:
        return False
    return True


def fitting_gpus(node: NodeView, request: PlacementRequest) -> list[Gpu] | None:
    """The GPUs one replica would take on ``node`` (smallest that fit first, so bigger
    ones stay free), or None when too few match."""
    # Once per node per replica placed (1,250 nodes per replica at scale): the
    # common checks are inlined, gpu_matches is left for the memory requirement.
    types, sized = request.gpu_types, bool(request.gpu_memory_gib)
    free = [
        gpu
        for gpu in node.gpus
        if gpu.allocated_to is None
        and gpu.healthy
        and (not types or gpu.type in types)
        and (not sized or gpu_matches(gpu, request))
    ]
    if len(free) < request.gpus_per_replica:
        return None
    return sorted(free, key=lambda g: (g.memory_mib, g.index))[: request.gpus_per_replica]


def node_eligible(node: NodeView, request: PlacementRequest) -> bool:
    if not (node.ready and node.schedulable):
        return False
    if request.cluster and node.cluster != request.cluster:
        return False
    return all(node.labels.get(k) == v for k, v in request.node_selector.items())


def describe_need(request: PlacementRequest) -> str:
    types = "/".join(request.gpu_types) if request.gpu_types else "GPU"
    memory = f" with {request.gpu_memory_gib:g} GiB" if request.gpu_memory_gib else ""
    return f"{request.gpus_per_replica}×{types}{memory} per replica"


def describe_free(fleet: FleetView, request: PlacementRequest) -> str:
    """What is free where this request may go, e.g. '1×H100 on gpu-a, 2×L4 on gpu-b'."""
    parts = []
    for node in fleet.nodes:
        if not node_eligible(node, request):
            continue
        free = Counter(gpu.type for gpu in node.free_gpus() if gpu_matches(gpu, request))
        parts += [f"{count}×{gtype} on {node.name}" for gtype, count in sorted(free.items())]
    return ", ".join(parts) if parts else "nothing"


def unschedulable_reason(fleet: FleetView, request: PlacementRequest, placed: int) -> str:
    missing = request.replicas - placed
    # No denominator: this pass's request is only what is missing, and the owner's
    # controller states scheduled/desired itself, so the message is stable across passes.
    candidates = [n for n in fleet.nodes if not request.cluster or n.cluster == request.cluster]
    cordoned = [n.name for n in candidates if n.ready and not n.schedulable]
    not_ready = [n.name for n in candidates if not n.ready]
    message = (
        f"{missing} {'replica' if missing == 1 else 'replicas'} unplaced: needs {describe_need(request)}, "
        f"free: {describe_free(fleet, request)}"
    )
    if not candidates:
        where = f"cluster {request.cluster}" if request.cluster else "the fleet"
        message += f"; {where} has no nodes (start an agent)"
    if cordoned:
        message += f"; cordoned: {', '.join(cordoned[:5])}"
    if not_ready:
        message += f"; not ready: {', '.join(not_ready[:5])}"
    if request.node_selector:
        selector = ",".join(f"{k}={v}" for k, v in request.node_selector.items())
        message += f"; nodeSelector {selector}"
    return message


# Orders a node that can take one more replica (with the GPUs it would take); smaller
# is better, ties go to the node whose name sorts first; None rules the node out.
NodeKey = Callable[[NodeView, list[Gpu]], tuple | None]


def place_by_key(
    request: PlacementRequest,
    fleet: FleetView,
    key: NodeKey,
    placed: Callable[[NodeView], None] | None = None,
) -> PlacementResult:
    """Place replicas one at a time, each on the eligible node with the smallest ``key``.

    The shared loop of the node-choosing schedulers: each marks the GPUs it takes in
    ``fleet`` (so the next replica sees them taken) and differs only in its key;
    ``placed`` lets a scheduler update its own bookkeeping after each choice.
    """
    owner = f"{request.owner_kind}/{request.owner_name}"
    placements: list[Placement] = []
    for _ in range(request.replicas):
        best: tuple[tuple, NodeView, list[Gpu]] | None = None
        for node in fleet.nodes:
            if not node_eligible(node, request):
                continue
            chosen = fitting_gpus(node, request)
            if chosen is None:
                continue
            rank = key(node, chosen)
            if rank is None:
                continue
            if best is None or (*rank, node.name) < best[0]:
                best = ((*rank, node.name), node, chosen)
        if best is None:
            break
        _, node, gpus = best
        for gpu in gpus:
            gpu.allocated_to = owner
        if placed is not None:
            placed(node)
        placements.append(Placement(node.name, sorted(g.index for g in gpus), request.role))
    reason = None
    if len(placements) < request.replicas:
        reason = unschedulable_reason(fleet, request, len(placements))
    return PlacementResult(placements, reason)


class Binpack:
    name: ClassVar[str] = "binpack"
    kind: ClassVar[str] = "scheduler"
    description: ClassVar[str] = "Best fit by free GPU memory; honours types, cordons and labels."
    Params: ClassVar[type[BaseModel]] = BinpackParams

    def place(self, *, request: PlacementRequest, fleet: FleetView, params: BaseModel) -> PlacementResult:
        assert isinstance(params, BinpackParams)

        def memory_left(node: NodeView, chosen: list[Gpu]) -> tuple:
            left = sum(g.memory_mib for g in node.free_gpus()) - sum(g.memory_mib for g in chosen)
            return (-left if params.spread else left,)

        return place_by_key(request, fleet, memory_left)


@hookimpl
def register_schedulers():
    return [Binpack()]
