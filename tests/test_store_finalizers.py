"""store.add_finalizer / store.remove_finalizer: idempotent, kopf style."""

from __future__ import annotations

import pytest

from controlplane import store
from controlplane.models import Change, Resource

pytestmark = pytest.mark.django_db

HOLD = "flotilla.dev/test-hold"
OTHER = "flotilla.dev/other"


def workload(name: str = "w") -> Resource:
    return store.create("Workload", name, {"nodeName": "gpu-a", "gpus": [0]})


def test_adding_a_finalizer_writes_once_and_a_repeat_writes_nothing():
    resource = workload()
    assert store.add_finalizer(resource, HOLD) is True
    version = resource.resource_version
    assert store.get("Workload", "w").finalizers == [HOLD]
    assert store.add_finalizer(resource, HOLD) is False
    assert store.get("Workload", "w").resource_version == version
    assert Change.objects.filter(name="w").count() == 2  # created, then held: no third change


def test_adding_keeps_the_finalizers_already_there_in_order():
    resource = workload()
    store.add_finalizer(resource, OTHER)
    store.add_finalizer(resource, HOLD)
    assert store.get("Workload", "w").finalizers == [OTHER, HOLD]


def test_removing_a_finalizer_that_is_not_there_writes_nothing():
    resource = workload()
    store.add_finalizer(resource, OTHER)
    version = resource.resource_version
    assert store.remove_finalizer(resource, HOLD) is False
    assert store.get("Workload", "w").resource_version == version


def test_removing_lifts_only_the_named_finalizer():
    resource = workload()
    store.add_finalizer(resource, OTHER)
    store.add_finalizer(resource, HOLD)
    assert store.remove_finalizer(resource, HOLD) is True
    version = resource.resource_version
    assert store.get("Workload", "w").finalizers == [OTHER]
    assert store.remove_finalizer(resource, HOLD) is False
    assert store.get("Workload", "w").resource_version == version


def test_removing_the_last_finalizer_of_an_object_being_deleted_deletes_it():
    resource = workload()
    store.add_finalizer(resource, HOLD)
    assert store.request_delete(resource) is False  # held: only marked
    assert store.remove_finalizer(resource, HOLD) is True
    assert store.find("Workload", "w") is None
    assert Change.objects.filter(name="w").order_by("-id").first().type == "DELETED"


def test_an_object_being_deleted_stays_while_another_finalizer_holds_it():
    resource = workload()
    store.add_finalizer(resource, OTHER)
    store.add_finalizer(resource, HOLD)
    store.request_delete(resource)
    store.remove_finalizer(resource, HOLD)
    held = store.get("Workload", "w")
    assert held.deletion_timestamp is not None and held.finalizers == [OTHER]
