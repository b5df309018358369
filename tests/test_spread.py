"""The built-in spread scheduler (anti-affinity baseline). Pure: no database, no Django."""

from __future__ import annotations

from collections import Counter

import pytest
from pydantic import ValidationError

from plugins.manager import build_registry, make_manager
from plugins.spread import Spread, SpreadParams
from plugins.types import FleetView
from tests.test_binpack import node, request


def place(fleet: FleetView, replicas: int, **params):
    return Spread().place(request=request(replicas), fleet=fleet, params=SpreadParams(**params))


def test_replicas_go_to_different_nodes_before_any_node_gets_two():
    fleet = FleetView([node("a"), node("b"), node("c")])
    result = place(fleet, 5)
    per_node = Counter(p.node for p in result.placements)
    assert result.unschedulable is None
    assert sorted(per_node.values()) == [1, 2, 2]


def test_binpack_would_stack_them_where_spread_does_not():
    from plugins.binpack import Binpack, BinpackParams

    packed = Binpack().place(
        request=request(3), fleet=FleetView([node("a"), node("b")]), params=BinpackParams()
    )
    spread = place(FleetView([node("a"), node("b")]), 3)
    assert len({p.node for p in packed.placements}) == 1
    assert len({p.node for p in spread.placements}) == 2


def test_replicas_placed_in_earlier_passes_count():
    fleet = FleetView([node("a"), node("b")])
    fleet.nodes[0].gpus[0].allocated_to = "Deployment/chat"  # one replica already on a
    result = place(fleet, 1)
    assert [p.node for p in result.placements] == ["b"]


def test_strict_leaves_replicas_unplaced_rather_than_doubling_up():
    result = place(FleetView([node("a"), node("b")]), 3, strict=True)
    assert len(result.placements) == 2
    assert "1 replica unplaced" in result.unschedulable
    assert "at most one replica per node" in result.unschedulable


def test_topology_key_spreads_across_label_domains():
    fleet = FleetView(
        [
            node("a1", labels={"zone": "a"}),
            node("a2", labels={"zone": "a"}),
            node("b1", labels={"zone": "b"}),
        ]
    )
    result = place(fleet, 2, topologyKey="zone", strict=True)
    assert sorted(p.node for p in result.placements)[1] == "b1"
    assert len({fleet.node(p.node).labels["zone"] for p in result.placements}) == 2


def test_ties_go_to_the_node_with_most_free_memory():
    fleet = FleetView([node("busy", allocated=(0, 1, 2)), node("idle")])
    assert [p.node for p in place(fleet, 1).placements] == ["idle"]


def test_unknown_params_are_refused_and_spread_is_registered():
    with pytest.raises(ValidationError):
        SpreadParams(zone="a")
    registry = build_registry(make_manager([], entrypoints=False))
    assert "spread" in registry["scheduler"]
