"""Built-in scheduler ``spread``: anti-affinity, so one node's loss takes as few replicas as possible.

Each replica goes to the eligible domain (a node, or the nodes sharing the value
of ``topologyKey``, e.g. a zone or rack label) that holds the fewest replicas of
the same owner; ties go to the node with the most free GPU memory. With
``strict`` a domain never holds two replicas of one owner, and replicas that
would have to double up stay unplaced with a reason instead. It is the baseline
that the cost-aware schedulers are measured against, beside ``binpack``.
"""

from __future__ import annotations

from collections import Counter
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from plugins.binpack import place_by_key
from plugins.hookspecs import hookimpl
from plugins.types import FleetView, Gpu, NodeView, PlacementRequest, PlacementResult


class SpreadParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    topologyKey: str | None = Field(
        default=None,
        max_length=253,
        description="Node label whose values are the failure domains (e.g. zone); unset: each node is one.",
    )
    strict: bool = Field(
        default=False,
        description="Never put two replicas of one owner in the same domain; leave them unplaced instead.",
    )


def domain_of(node: NodeView, topology_key: str | None) -> str:
    if topology_key is None:
        return node.name
    # Nodes without the label form one domain of their own, named so it cannot clash.
    return node.labels.get(topology_key, f"<no {topology_key}>")


class Spread:
    name: ClassVar[str] = "spread"
    kind: ClassVar[str] = "scheduler"
    description: ClassVar[str] = "Anti-affinity: replicas of one owner on different nodes (or label domains)."
    Params: ClassVar[type[BaseModel]] = SpreadParams

    def place(self, *, request: PlacementRequest, fleet: FleetView, params: BaseModel) -> PlacementResult:
        assert isinstance(params, SpreadParams)
        owner = f"{request.owner_kind}/{request.owner_name}"
        # Replicas already placed (earlier passes) count: GPUs carry their owner.
        per_domain: Counter[str] = Counter()
        for node in fleet.nodes:
            held = {gpu.index for gpu in node.gpus if gpu.allocated_to == owner}
            if held:
                per_domain[domain_of(node, params.topologyKey)] += max(
                    1, len(held) // request.gpus_per_replica
                )

        def fewest_replicas(node: NodeView, chosen: list[Gpu]) -> tuple | None:
            domain = domain_of(node, params.topologyKey)
            if params.strict and per_domain[domain]:
                return None
            return (per_domain[domain], -sum(g.memory_mib for g in node.free_gpus()))

        def placed(node: NodeView) -> None:
            per_domain[domain_of(node, params.topologyKey)] += 1

        result = place_by_key(request, fleet, fewest_replicas, placed)
        if result.unschedulable and params.strict:
            domains = "node" if params.topologyKey is None else f"{params.topologyKey} value"
            result.unschedulable += f"; spread is strict: at most one replica per {domains}"
        return result


@hookimpl
def register_schedulers():
    return [Spread()]
