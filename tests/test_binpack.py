"""The built-in binpack scheduler, on fleets built by hand. Pure: no database, no Django."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from plugins import binpack
from plugins.binpack import Binpack, BinpackParams
from plugins.types import FleetView, Gpu, NodeView, Placement, PlacementRequest

H100_MIB = 81559
L4_MIB = 23034


def node(
    name: str,
    gpus: int = 8,
    gpu_type: str = "H100",
    memory_mib: int = H100_MIB,
    *,
    allocated: tuple[int, ...] = (),
    unhealthy: tuple[int, ...] = (),
    cluster: str | None = None,
    labels: dict[str, str] | None = None,
    ready: bool = True,
    schedulable: bool = True,
) -> NodeView:
    return NodeView(
        name=name,
        cluster=cluster,
        labels=labels or {},
        ready=ready,
        schedulable=schedulable,
        gpus=[
            Gpu(
                index=i,
                type=gpu_type,
                memory_mib=memory_mib,
                healthy=i not in unhealthy,
                allocated_to="Deployment/other" if i in allocated else None,
            )
            for i in range(gpus)
        ],
    )


def request(replicas: int = 1, **fields) -> PlacementRequest:
    return PlacementRequest(owner_kind="Deployment", owner_name="chat", replicas=replicas, **fields)


def place(fleet: FleetView, req: PlacementRequest, spread: bool = False):
    return Binpack().place(request=req, fleet=fleet, params=BinpackParams(spread=spread))


# --- choosing a node --------------------------------------------------------------


def test_it_places_a_replica_on_the_best_fitting_node():
    fleet = FleetView([node("roomy"), node("snug", allocated=(0, 1, 2, 3, 4, 5)), node("mid", gpus=4)])
    result = place(fleet, request())
    assert result.placements == [Placement("snug", [6], "serve")]
    assert result.unschedulable is None


def test_best_fit_counts_free_memory_not_free_gpu_count():
    # Three free L4s are more GPUs than two free H100s, but leave less memory after one is taken.
    fleet = FleetView([node("big", gpus=2), node("small", gpus=3, gpu_type="L4", memory_mib=L4_MIB)])
    result = place(fleet, request())
    assert result.placements[0].node == "small"


def test_spread_places_a_replica_on_the_node_with_the_most_free_memory():
    fleet = FleetView([node("snug", allocated=(0, 1, 2, 3, 4, 5)), node("roomy"), node("mid", gpus=4)])
    result = place(fleet, request(), spread=True)
    assert result.placements == [Placement("roomy", [0], "serve")]


def test_spread_puts_consecutive_replicas_on_different_nodes():
    fleet = FleetView([node("a", gpus=2), node("b", gpus=2)])
    result = place(fleet, request(replicas=2), spread=True)
    assert sorted(p.node for p in result.placements) == ["a", "b"]


def test_best_fit_packs_consecutive_replicas_onto_one_node():
    fleet = FleetView([node("a", gpus=2), node("b", gpus=2)])
    result = place(fleet, request(replicas=2))
    assert [(p.node, p.gpus) for p in result.placements] == [("a", [0]), ("a", [1])]


def test_it_breaks_ties_by_node_name():
    fleet = FleetView([node("zeta", gpus=2), node("alpha", gpus=2)])
    assert place(fleet, request()).placements[0].node == "alpha"


def test_it_takes_the_smallest_gpus_on_a_mixed_node_so_big_ones_stay_free():
    mixed = NodeView(
        "mixed",
        None,
        {},
        True,
        True,
        [Gpu(0, "H100", H100_MIB), Gpu(1, "L4", L4_MIB), Gpu(2, "H100", H100_MIB), Gpu(3, "L4", L4_MIB)],
    )
    result = place(FleetView([mixed]), request(gpus_per_replica=2))
    assert result.placements == [Placement("mixed", [1, 3], "serve")]


def test_it_carries_the_requested_role_into_each_placement():
    result = place(FleetView([node("a", gpus=2)]), request(role="train"))
    assert result.placements == [Placement("a", [0], "train")]


# --- honouring the request --------------------------------------------------------


def test_it_honours_gpu_types():
    fleet = FleetView([node("h", gpus=1), node("l4", gpus=8, gpu_type="L4", memory_mib=L4_MIB)])
    result = place(fleet, request(replicas=2, gpu_types=["L4"]))
    assert [(p.node, p.gpus) for p in result.placements] == [("l4", [0]), ("l4", [1])]


def test_it_accepts_any_of_several_gpu_types():
    fleet = FleetView(
        [node("a100", gpus=1, gpu_type="A100-80GB", memory_mib=81920), node("l4", gpu_type="L4")]
    )
    result = place(fleet, request(gpu_types=["H100", "A100-80GB"]))
    assert result.placements[0].node == "a100"


def test_it_honours_gpu_memory():
    fleet = FleetView([node("l4", gpus=8, gpu_type="L4", memory_mib=L4_MIB), node("h", gpus=1)])
    result = place(fleet, request(gpu_memory_gib=40))
    assert result.placements == [Placement("h", [0], "serve")]


def test_it_places_whole_replicas_on_one_node_and_never_spans_nodes():
    fleet = FleetView([node("a", gpus=2, allocated=(0,)), node("b", gpus=2, allocated=(1,))])
    result = place(fleet, request(gpus_per_replica=2))
    assert result.placements == []
    assert result.unschedulable is not None


def test_it_gives_a_multi_gpu_replica_gpus_from_one_node():
    fleet = FleetView([node("a", gpus=4, allocated=(1,)), node("b", gpus=2)])
    result = place(fleet, request(replicas=2, gpus_per_replica=2))
    assert [(p.node, p.gpus) for p in result.placements] == [("b", [0, 1]), ("a", [0, 2])]


def test_it_honours_the_node_selector():
    fleet = FleetView(
        [node("plain", gpus=1), node("eu", labels={"zone": "eu-1", "tier": "gold"}), node("us", gpus=1)]
    )
    result = place(fleet, request(replicas=2, node_selector={"zone": "eu-1", "tier": "gold"}))
    assert {p.node for p in result.placements} == {"eu"}


def test_a_node_selector_value_must_match_exactly():
    fleet = FleetView([node("eu", labels={"zone": "eu-2"})])
    result = place(fleet, request(node_selector={"zone": "eu-1"}))
    assert result.placements == []
    assert "nodeSelector zone=eu-1" in result.unschedulable


def test_it_honours_the_cluster():
    fleet = FleetView([node("a", gpus=1, cluster="dev"), node("b", cluster="prod"), node("c", gpus=1)])
    result = place(fleet, request(replicas=2, cluster="prod"))
    assert {p.node for p in result.placements} == {"b"}


def test_it_skips_nodes_that_are_not_ready():
    fleet = FleetView([node("down", gpus=1, ready=False), node("up")])
    result = place(fleet, request())
    assert result.placements[0].node == "up"


def test_it_skips_cordoned_nodes():
    fleet = FleetView([node("cordoned", gpus=1, schedulable=False), node("open")])
    result = place(fleet, request())
    assert result.placements[0].node == "open"


def test_it_never_reuses_an_allocated_gpu():
    fleet = FleetView([node("a", gpus=4, allocated=(0, 2))])
    result = place(fleet, request(replicas=3))
    assert [p.gpus for p in result.placements] == [[1], [3]]
    assert result.unschedulable is not None


def test_it_skips_unhealthy_gpus():
    fleet = FleetView([node("a", gpus=3, unhealthy=(0, 1))])
    result = place(fleet, request(replicas=2))
    assert [p.gpus for p in result.placements] == [[2]]


def test_it_marks_what_it_placed_as_allocated_in_the_snapshot():
    fleet = FleetView([node("a", gpus=2)])
    place(fleet, request())
    assert [gpu.allocated_to for gpu in fleet.nodes[0].gpus] == ["Deployment/chat", None]
    # A second owner placed on the same snapshot gets the other GPU.
    other = PlacementRequest(owner_kind="TrainingJob", owner_name="pretrain", replicas=1)
    assert place(fleet, other).placements == [Placement("a", [1], "serve")]


def test_it_places_nothing_when_nothing_is_requested():
    result = place(FleetView([node("a")]), request(replicas=0))
    assert result.placements == []
    assert result.unschedulable is None


# --- saying why not ---------------------------------------------------------------


def test_a_partial_placement_says_what_is_needed_and_what_is_free():
    fleet = FleetView([node("n1", gpus=3)])
    result = place(fleet, request(replicas=2, gpus_per_replica=2, gpu_types=["H100"]))
    assert result.placements == [Placement("n1", [0, 1], "serve")]
    assert result.unschedulable is not None
    assert "1 replica unplaced" in result.unschedulable
    assert "2×H100" in result.unschedulable
    assert "free: 1×H100 on n1" in result.unschedulable


def test_the_message_names_the_memory_needed():
    fleet = FleetView([node("n1", gpus=1, gpu_type="L4", memory_mib=L4_MIB)])
    result = place(fleet, request(gpu_types=["L4"], gpu_memory_gib=40))
    assert "needs 1×L4 with 40 GiB per replica" in result.unschedulable
    assert result.unschedulable.endswith("free: nothing")


def test_the_message_lists_free_gpus_of_every_matching_type_by_node():
    fleet = FleetView(
        [node("n1", gpus=1), node("n2", gpus=1, gpu_type="A100-80GB", memory_mib=81920), node("n3", gpus=0)]
    )
    result = place(fleet, request(replicas=3, gpu_types=["H100", "A100-80GB"]))
    assert len(result.placements) == 2
    assert "needs 1×H100/A100-80GB per replica" in result.unschedulable
    assert "1 replica unplaced" in result.unschedulable
    assert "free: nothing" in result.unschedulable


def test_the_message_names_cordoned_and_not_ready_nodes():
    fleet = FleetView([node("c1", schedulable=False), node("d1", ready=False)])
    result = place(fleet, request())
    assert "cordoned: c1" in result.unschedulable
    assert "not ready: d1" in result.unschedulable


def test_the_message_says_when_the_fleet_has_no_nodes():
    result = place(FleetView([]), request())
    assert "the fleet has no nodes (start an agent)" in result.unschedulable


def test_the_message_says_when_the_cluster_has_no_nodes():
    result = place(FleetView([node("a", cluster="dev")]), request(cluster="prod"))
    assert "cluster prod has no nodes" in result.unschedulable


def test_describe_free_ignores_gpus_the_request_cannot_use():
    fleet = FleetView([node("n1", gpus=2, gpu_type="L4", memory_mib=L4_MIB), node("n2", gpus=1)])
    assert binpack.describe_free(fleet, request(gpu_types=["H100"])) == "1×H100 on n2"
    assert binpack.describe_free(fleet, request()) == "2×L4 on n1, 1×H100 on n2"


# --- the plugin itself ------------------------------------------------------------


def test_binpack_declares_its_name_kind_and_params():
    assert (Binpack.name, Binpack.kind) == ("binpack", "scheduler")
    assert Binpack.Params is BinpackParams
    assert BinpackParams().spread is False


def test_binpack_params_reject_unknown_fields():
    with pytest.raises(ValidationError):
        BinpackParams.model_validate({"sprad": True})


def test_binpack_registers_itself_through_the_scheduler_hook():
    (scheduler,) = binpack.register_schedulers()
    assert isinstance(scheduler, Binpack)
