"""Sizing schedulers through the owner controller and the API's dry run (database, no workers)."""

from __future__ import annotations

import sys
import types
from typing import ClassVar

import pytest

from controlplane import store
from controlplane.apply import apply
from controlplane.conditions import get_condition
from controlplane.controllers import owners
from controlplane.models import Resource
from plugins import manager
from plugins.binpack import Binpack
from plugins.hookspecs import hookimpl
from tests.conftest import deployment
from tests.test_sizing_schedulers import LLAMA_8B

pytestmark = pytest.mark.django_db

CLUSTER = {
    "apiVersion": "flotilla.dev/v1",
    "kind": "Cluster",
    "metadata": {"name": "lab"},
    "spec": {"gpuPrices": {"H100": 4.5, "A100-80GB": 3.67}},
}


def sized(name: str = "chat", rate: float = 30.0, **spec) -> dict:
    return deployment(
        name,
        replicas=1,
        model={"source": "builtin:tiny-llama", "config": LLAMA_8B},
        workload={"requestsPerSecond": rate, "inputTokens": 512, "outputTokens": 128},
        slo={"ttftMs": 2000, "tpotMs": 100},
        policies={"scheduler": "melange"},
        **spec,
    )


def workload_types(name: str) -> dict[str, int]:
    """Replicas per GPU type (the router, which takes no GPU, is not a replica)."""
    types: dict[str, int] = {}
    for workload in Resource.objects.filter(kind="Workload", owner_ref=f"Deployment/{name}"):
        if workload.spec["role"] == "router":
            continue
        node = store.get("Node", workload.node_name)
        device = next(d for d in node.status["devices"] if d["index"] == workload.spec["gpus"][0])
        types[device["type"]] = types.get(device["type"], 0) + 1
    return types


def test_melange_sizes_the_deployment_and_places_the_planned_mix(add_node):
    add_node("h100-node", gpus=4, gpu_type="H100")
    add_node("a100-node", gpus=4, gpu_type="A100-80GB", memory_mib=81920)
    apply([CLUSTER, sized(rate=70.0)], actor="test")
    owners.reconcile("Deployment", "chat")
    owner = store.get("Deployment", "chat")
    plan = owner.status["plan"]
    assert plan["policy"] == "melange" and plan["generation"] == owner.generation
    assert workload_types("chat") == plan["replicas"]
    assert sum(plan["replicas"].values()) > 1  # 70 req/s needs more than the declared 1 replica
    # What runs, not spec.replicas, decides the router: several replicas need one in front.
    assert store.get("Workload", "chat-router-0").spec["gpus"] == []
    assert get_condition(owner.status, "Scheduled")["status"] == "True"
    assert owner.status["replicas"]["desired"] == sum(plan["replicas"].values())

    # A second pass keeps the placed plan: nothing moves, nothing is re-created.
    before = set(Resource.objects.filter(kind="Workload").values_list("name", flat=True))
    owners.reconcile("Deployment", "chat")
    assert set(Resource.objects.filter(kind="Workload").values_list("name", flat=True)) == before


def test_a_lower_rate_scales_the_mix_down(add_node):
    add_node("a100-node", gpus=8, gpu_type="A100-80GB", memory_mib=81920)
    apply([CLUSTER, sized(rate=30.0)], actor="test")
    owners.reconcile("Deployment", "chat")
    many = sum(workload_types("chat").values())
    apply([CLUSTER, sized(rate=3.0)], actor="test")
    owners.reconcile("Deployment", "chat")
    assert sum(workload_types("chat").values()) < many


def test_too_few_free_gpus_places_a_partial_mix_and_says_what_is_missing(add_node):
    add_node("a100-node", gpus=1, gpu_type="A100-80GB", memory_mib=81920)
    apply([CLUSTER, sized(rate=60.0)], actor="test")
    owners.reconcile("Deployment", "chat")
    owner = store.get("Deployment", "chat")
    assert workload_types("chat") == {"A100-80GB": 1}
    scheduled = get_condition(owner.status, "Scheduled")
    assert scheduled["status"] == "False" and "partial mix" in scheduled["message"]


def test_a_deployment_that_cannot_be_planned_says_which_field_to_fix(add_node):
    add_node("a100-node", gpus=2, gpu_type="A100-80GB", memory_mib=81920)
    document = sized()
    document["spec"]["slo"] = {}
    apply([document], actor="test")
    owners.reconcile("Deployment", "chat")
    scheduled = get_condition(store.get("Deployment", "chat").status, "Scheduled")
    assert scheduled["status"] == "False" and "spec.slo" in scheduled["message"]
    assert Resource.objects.filter(kind="Workload").count() == 0


def test_distserve_shows_its_plan_and_runs_nothing(add_node):
    add_node("h100-node", gpus=8, gpu_type="H100")
    document = sized(disaggregation="auto")
    document["spec"]["policies"] = {"scheduler": "distserve"}
    apply([CLUSTER, document], actor="test")
    owners.reconcile("Deployment", "chat")
    owner = store.get("Deployment", "chat")
    scheduled = get_condition(owner.status, "Scheduled")
    assert scheduled["status"] == "False" and scheduled["reason"] == "RuntimeUnsupported"
    assert "prefill" in scheduled["message"] and "decode" in scheduled["message"]
    assert set(owner.status["plan"]["roles"]) == {"prefill", "decode"}
    assert Resource.objects.filter(kind="Workload").count() == 0


def test_dry_run_shows_every_candidate_and_the_chosen_policy(operator, add_node):
    add_node("h100-node", gpus=4, gpu_type="H100")
    add_node("a100-node", gpus=4, gpu_type="A100-80GB", memory_mib=81920)
    apply([CLUSTER], actor="test")
    response = operator.apply(sized(rate=10.0), dry_run=True)
    assert response.status_code == 200, response.content
    schedule = response.json()["results"][0]["schedule"]
    assert schedule["chosen"] == "melange"
    plans = {plan["policy"]: plan for plan in schedule["plans"]}
    assert set(plans) == {"binpack", "spread", "melange"}
    for plan in plans.values():
        assert plan["costPerHour"] > 0
        assert 0 <= plan["predicted"]["sloAttainment"] <= 1
        assert plan["nodes"], plan
    assert Resource.objects.filter(kind="Workload").count() == 0  # a dry run writes nothing


class Packer(Binpack):
    name: ClassVar[str] = "packer"
    description: ClassVar[str] = "Test plugin: an installed scheduler, packing like binpack."


class DisaggregatedOnly(Binpack):
    name: ClassVar[str] = "disaggregated-only"
    description: ClassVar[str] = "Test plugin: previewed only for disaggregation: auto."
    requires_disaggregation: ClassVar[bool] = True


@hookimpl
def _register_schedulers():
    return [Packer(), DisaggregatedOnly()]


@pytest.fixture
def installed(monkeypatch):
    """Two schedulers installed from a module (FLOTILLA_PLUGIN_MODULES); melange and
    distserve left out (FLOTILLA_PLUGINS) so the dry run simulates nothing."""
    module = types.ModuleType("flotilla_preview_plugins")
    module.register_schedulers = _register_schedulers  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setenv("FLOTILLA_PLUGIN_MODULES", module.__name__)
    monkeypatch.setenv("FLOTILLA_PLUGINS", "binpack,spread,packer,disaggregated-only")
    manager.reset()
    yield
    manager.reset()


@pytest.mark.usefixtures("installed")
@pytest.mark.parametrize(
    ("disaggregation", "expected"),
    [
        ("off", ["binpack", "spread", "packer"]),
        ("auto", ["binpack", "spread", "packer", "disaggregated-only"]),
    ],
)
def test_the_dry_run_previews_every_installed_scheduler(operator, add_node, disaggregation, expected):
    add_node("h100-node", gpus=4, gpu_type="H100")
    document = deployment("chat", replicas=1, disaggregation=disaggregation)
    response = operator.apply(document, dry_run=True)
    assert response.status_code == 200, response.content
    schedule = response.json()["results"][0]["schedule"]
    assert [plan["policy"] for plan in schedule["plans"]] == expected
    assert schedule["chosen"] == "binpack"
    assert all(plan["nodes"] for plan in schedule["plans"])
