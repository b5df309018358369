"""The fleet snapshot's parsed-Node cache and ``refresh``: never staler than the database.

The cache is filled only outside transactions, so the caching tests use
``transaction=True`` (real commits) rather than pytest-django's rolled-back test
transaction.
"""

from __future__ import annotations

import copy

import pytest
from django.db import transaction

from controlplane import fleet, store
from controlplane.controllers import nodes
from controlplane.models import Resource
from tests.conftest import simulated_devices


@pytest.fixture(autouse=True)
def empty_cache():
    fleet._cache.clear()
    fleet._reusable.__dict__.clear()
    yield
    fleet._cache.clear()
    fleet._reusable.__dict__.clear()


def register(name: str, gpus: int = 2, gpu_type: str = "H100") -> None:
    nodes.register(name, cluster=None, labels={}, devices=simulated_devices(gpus, gpu_type, 81559), info={})


def types(view, name: str) -> list[str]:
    return [gpu.type for gpu in view.node(name).gpus]


def write_devices(name: str, count: int, gpu_type: str) -> None:
    with transaction.atomic():
        store.lock_writes()
        node = store.get("Node", name, for_update=True)
        status = copy.deepcopy(node.status)
        status["devices"] = simulated_devices(count, gpu_type, 49152)
        store.update_status(node, status)


def workload(name: str, node: str, gpus: list[int]) -> None:
    store.create(
        "Workload",
        name,
        {
            "owner": {"kind": "Deployment", "name": "d", "uid": "00000000-0000-0000-0000-000000000001"},
            "role": "serve",
            "nodeName": node,
            "gpus": gpus,
            "runtime": "serve",
            "config": {},
        },
    )


@pytest.mark.django_db(transaction=True)
def test_a_cached_node_is_decoded_again_once_it_changes():
    register("n1")
    assert types(fleet.snapshot(), "n1") == ["H100", "H100"]
    assert "n1" in fleet._cache._rows  # read outside a transaction: cached

    write_devices("n1", 3, "L40S")
    assert types(fleet.snapshot(), "n1") == ["L40S"] * 3


@pytest.mark.django_db(transaction=True)
def test_a_node_deleted_and_registered_again_is_not_served_from_the_cache():
    register("n1", gpu_type="H100")
    fleet.snapshot()
    Resource.objects.filter(kind="Node", name="n1").delete()
    assert fleet.snapshot().nodes == []
    register("n1", gpu_type="L4")
    assert types(fleet.snapshot(), "n1") == ["L4", "L4"]


@pytest.mark.django_db(transaction=True)
def test_rows_read_inside_a_transaction_are_not_cached():
    """A row this transaction wrote may roll back, and its resourceVersion be handed out
    again for other content: such a row must not outlive the transaction in the cache."""
    register("n1")
    fleet._cache.clear()
    with pytest.raises(RuntimeError), transaction.atomic():
        write_devices("n1", 4, "A10G")
        assert types(fleet.snapshot(), "n1") == ["A10G"] * 4  # its own write, seen inside
        raise RuntimeError("roll back")
    assert "n1" not in fleet._cache._rows
    write_devices("n1", 1, "L4")  # may reuse the rolled-back version number
    assert types(fleet.snapshot(), "n1") == ["L4"]


@pytest.mark.django_db(transaction=True)
def test_refresh_updates_allocations_in_place_and_rebuilds_when_a_node_changed():
    register("n1")
    register("n2")
    view, basis = fleet.versioned_snapshot()
    view.node("n1").gpus[0].allocated_to = "Deployment/rolled-back"  # a mark with no Workload
    workload("w1", "n2", [1])
    refreshed, basis = fleet.refresh(view, basis)
    assert refreshed is view  # no Node changed: only allocations were re-read
    assert [gpu.allocated_to for gpu in view.node("n2").gpus] == [None, "Deployment/d"]
    assert all(gpu.allocated_to is None for gpu in view.node("n1").gpus)

    write_devices("n1", 1, "L4")
    rebuilt, _ = fleet.refresh(view, basis)
    assert rebuilt is not view
    assert types(rebuilt, "n1") == ["L4"]
    assert [gpu.allocated_to for gpu in rebuilt.node("n2").gpus] == [None, "Deployment/d"]


@pytest.mark.django_db(transaction=True)
def test_the_controllers_reusable_snapshot_is_refreshed_not_rebuilt_while_no_node_changes():
    register("n1")
    first, _ = fleet.reusable_snapshot()
    workload("w1", "n1", [0])
    second, _ = fleet.reusable_snapshot()
    assert second.node("n1") is first.node("n1")  # the same objects, refreshed
    assert second.node("n1").gpus[0].allocated_to == "Deployment/d"
    write_devices("n1", 3, "L4")
    third, _ = fleet.reusable_snapshot()
    assert third.node("n1") is not first.node("n1")
    assert types(third, "n1") == ["L4"] * 3


@pytest.mark.django_db
def test_ready_and_cordon_come_from_the_current_row():
    register("n1")
    assert fleet.ready_node_names() == {"n1"}
    node = store.get("Node", "n1")
    store.update(node, spec={**node.spec, "unschedulable": True})
    assert fleet.snapshot().node("n1").schedulable is False
