"""A Deployment's router Workload: who gets one, where it goes, its config and backends,
the Deployment's status.url, and how the router and replicas follow a spec change."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cli.output import describe, resource_table
from common import apikeys
from controlplane import openapi, store
from controlplane.apply import apply
from controlplane.conditions import get_condition, is_true
from controlplane.controllers import nodes, owners
from controlplane.models import AuditEntry, Change, Event, Resource
from plugins import manager
from plugins.binpack import Binpack, BinpackParams
from plugins.types import FleetView, Gpu, NodeView, PlacementRequest
from tests.conftest import Api, age_lease, deployment, simulated_devices

pytestmark = pytest.mark.django_db

PLAIN_KEY = "k3y-0f-s1xteen-plus-chars-0123456789"
ROUTER = "chat-router-0"


def create(*documents: dict[str, Any]) -> None:
    apply(list(documents), actor="test")


def reconcile(name: str = "chat") -> Resource:
    owners.reconcile("Deployment", name)
    return store.get("Deployment", name)


def owned(name: str = "chat") -> list[Resource]:
    return list(Resource.objects.filter(kind="Workload", owner_ref=f"Deployment/{name}").order_by("name"))


def replicas(name: str = "chat") -> list[Resource]:
    return [w for w in owned(name) if w.spec["role"] != "router"]


def router(name: str = "chat") -> Resource | None:
    found = [w for w in owned(name) if w.spec["role"] == "router"]
    assert len(found) <= 1, f"more than one router: {found}"
    return found[0] if found else None


def serving(workload: Resource, endpoint: str) -> None:
    """Report ``workload`` Ready at ``endpoint`` for its current generation, as its agent does."""
    workload = store.get("Workload", workload.name)
    status = {
        **workload.status,
        "phase": "Running",
        "observedGeneration": workload.generation,
        "endpoint": endpoint,
        "conditions": [{"type": "Ready", "status": "True", "reason": "Serving", "message": ""}],
    }
    store.update_status(workload, status)


def stopped(workload: Resource) -> None:
    workload = store.get("Workload", workload.name)
    status = {
        **workload.status,
        "phase": "BackOff",
        "conditions": [{"type": "Ready", "status": "False", "reason": "CrashLoopBackOff", "message": ""}],
    }
    status.pop("endpoint", None)
    store.update_status(workload, status)


def condition(owner: Resource, type_: str) -> dict[str, Any]:
    found = get_condition(owner.status, type_)
    assert found is not None
    return found


def reasons(name: str = "chat") -> list[str]:
    return list(
        Event.objects.filter(kind="Deployment", name=name).order_by("id").values_list("reason", flat=True)
    )


def cache_params(plugin: str) -> dict[str, Any]:
    return manager.get("cache", plugin).Params().model_dump(mode="json")


# --- who gets a router, and where ------------------------------------------------------------


def test_a_deployment_of_two_replicas_gets_one_router_placed_without_a_gpu(add_node):
    add_node("gpu-a", gpus=2)
    create(deployment("chat", replicas=2))
    owner = reconcile()

    found = router()
    assert found is not None and found.name == ROUTER
    assert (found.spec["role"], found.spec["runtime"], found.spec["gpus"]) == ("router", "route", [])
    assert found.spec["nodeName"] == "gpu-a" and found.spec.get("executor", "agent") == "agent"
    assert found.labels == {owners.OWNER_LABEL: "chat", "flotilla.dev/role": "router"}
    assert found.spec["owner"] == {"kind": "Deployment", "name": "chat", "uid": str(owner.uid)}
    assert found.owner_references == [
        {"kind": "Deployment", "name": "chat", "uid": str(owner.uid), "controller": True}
    ]
    assert [w.spec["gpus"] for w in replicas()] == [[0], [1]]  # the router took none of them
    assert "RouterPlaced" in reasons()
    assert condition(owner, "Scheduled")["message"] == "2 replicas on 1 nodes, router on gpu-a"


def test_the_router_config_names_the_model_the_cache_choice_and_only_key_digests(add_node):
    add_node("gpu-a", gpus=2)
    create(
        deployment("chat", replicas=2, policies={"cache": "prefix-aware"}, serving={"apiKeys": [PLAIN_KEY]})
    )
    reconcile()

    digest = apikeys.digest(PLAIN_KEY)
    cache = {"policy": "prefix-aware", "plugin": "prefix-aware", "params": cache_params("prefix-aware")}
    model = store.get("Deployment", "chat").spec["model"]  # as applied: source, config, tokenizer
    assert model["source"] == "builtin:tiny-llama"
    assert router().spec["config"] == {
        "model": model,
        "name": "builtin:tiny-llama",  # what the replicas serve it as: they name none
        "cache": cache,
        "apiKeys": [digest],
        "blockSize": 16,
    }
    for replica in replicas():
        assert replica.spec["config"]["apiKeys"] == [digest] and replica.spec["config"]["cache"] == cache
    stored = [
        *Resource.objects.values_list("spec", "status"),
        *Change.objects.values_list("object", flat=True),
        *Event.objects.values_list("message", flat=True),
        *AuditEntry.objects.values_list("summary", flat=True),
    ]
    assert PLAIN_KEY not in json.dumps(stored, default=str)


def test_a_router_without_a_cache_policy_gets_no_cache_section_and_no_keys(add_node):
    add_node("gpu-a", gpus=2)
    create(deployment("chat", replicas=2))
    reconcile()
    config = router().spec["config"]
    assert "cache" not in config and "apiKeys" not in config  # it round-robins, and serves anyone
    assert all("apiKeys" not in w.spec["config"] for w in replicas())


def test_one_replica_without_a_cache_policy_gets_no_router(add_node):
    add_node("gpu-a", gpus=2)
    create(deployment("chat", replicas=1))
    reconcile()
    assert router() is None and len(replicas()) == 1


def test_a_cache_policy_adds_a_router_and_one_replica_without_it_loses_it(add_node):
    add_node("gpu-a", gpus=4)
    create(deployment("chat", replicas=1))
    reconcile()
    assert router() is None

    create(deployment("chat", replicas=1, policies={"cache": "prefix-aware"}))
    reconcile()
    first = router()
    assert first is not None

    create(deployment("chat", replicas=2, policies={"cache": "prefix-aware"}))
    reconcile()
    assert router().uid == first.uid  # still exactly one, the same one

    create(deployment("chat", replicas=1))
    owner = reconcile()
    assert router() is None and len(replicas()) == 1
    removed = Event.objects.get(kind="Deployment", name="chat", reason="RouterRemoved")
    assert removed.message == f"removed router workload/{ROUTER}: one replica and no cache policy"
    assert all(p["role"] != "router" for p in owner.status["placements"])


def test_scaling_to_zero_removes_the_router_too(add_node):
    add_node("gpu-a", gpus=2)
    create(deployment("chat", replicas=2, policies={"cache": "prefix-aware"}))
    reconcile()
    create(deployment("chat", replicas=0, policies={"cache": "prefix-aware"}))
    owner = reconcile()
    assert owned() == []
    assert condition(owner, "Ready")["reason"] == "ScaledToZero"


def test_binpack_places_a_request_of_no_gpu_on_any_ready_schedulable_node():
    full = NodeView("full", None, {}, True, True, [Gpu(0, "H100", 81559, allocated_to="Deployment/x")])
    roomy = NodeView("roomy", None, {}, True, True, [Gpu(0, "H100", 81559)])
    cpu = NodeView("cpu-only", None, {}, True, True, [])
    cordoned = NodeView("cordoned", None, {}, True, False, [])
    silent = NodeView("silent", None, {}, False, True, [])
    request = PlacementRequest("Deployment", "chat", replicas=1, gpus_per_replica=0, role="router")

    result = Binpack().place(request=request, fleet=FleetView([roomy, full, cpu]), params=BinpackParams())
    (placement,) = result.placements
    # Best fit: the node with the least free GPU memory, leaving the roomy one for GPU replicas.
    assert (placement.node, placement.gpus, placement.role) == ("cpu-only", [], "router")
    assert all(gpu.allocated_to is None for gpu in roomy.gpus)
    nowhere = Binpack().place(request=request, fleet=FleetView([cordoned, silent]), params=BinpackParams())
    assert nowhere.placements == []


def test_the_router_honours_the_cluster_and_node_selector_but_not_the_gpu_type(add_node):
    add_node("gpu-a", gpus=2, gpu_type="H100")
    add_node("cpu-b", gpus=0, labels={"zone": "eu-1"})
    add_node("gpu-c", gpus=2, gpu_type="H100", labels={"zone": "eu-1"})
    resources = {"gpusPerReplica": 1, "gpuTypes": ["H100"], "nodeSelector": {"zone": "eu-1"}}
    create(deployment("chat", replicas=2, resources=resources))
    reconcile()
    assert {w.node_name for w in replicas()} == {"gpu-c"}
    assert router().node_name == "cpu-b"  # no H100 there, but the router needs none


def test_no_router_is_made_where_the_kubernetes_executor_would_run_it_and_the_deployment_says_so(add_node):
    """A Pod has no node token to watch its backends with: the replicas run, Ready does
    not wait for a router, and a warning names why."""
    cluster = {"apiVersion": "flotilla.dev/v1", "kind": "Cluster", "metadata": {"name": "kube"}}
    create({**cluster, "spec": {"executor": "kubernetes"}})
    add_node("gpu-a", gpus=2, cluster="kube")
    create(deployment("chat", replicas=2, cluster="kube"))
    reconcile()
    assert {w.spec.get("executor") for w in owned()} == {"kubernetes"}
    assert [w.spec["role"] for w in owned()] == ["serve", "serve"]
    reasons = set(Event.objects.filter(name="chat").values_list("reason", flat=True))
    assert "RouterUnsupported" in reasons


def test_a_router_no_node_can_take_is_named_in_the_scheduled_condition(add_node):
    add_node("gpu-a", gpus=2)
    create(deployment("chat", replicas=2))
    reconcile()
    create(
        {
            "apiVersion": "flotilla.dev/v1",
            "kind": "Node",
            "metadata": {"name": "gpu-a"},
            "spec": {"unschedulable": True},
        }
    )
    store.request_delete(router())  # evicted, say, while the only node is cordoned
    owner = reconcile()

    assert router() is None and len(replicas()) == 2  # the replicas stay where they are
    scheduled = condition(owner, "Scheduled")
    assert scheduled["status"] == "False"
    assert scheduled["message"] == "2/2 scheduled; router unplaced: no ready, schedulable node"
    warning = Event.objects.get(kind="Deployment", name="chat", reason="FailedScheduling")
    assert warning.type == "Warning" and "router unplaced" in warning.message
    assert "url" not in owner.status and not is_true(owner.status, "Ready")


# --- not a replica -----------------------------------------------------------------------------


def test_the_router_is_not_counted_among_the_replicas(add_node):
    add_node("gpu-a", gpus=2)
    create(deployment("chat", replicas=2))
    reconcile()
    for index, replica in enumerate(replicas()):
        serving(replica, f"http://10.0.0.5:{8000 + index}")
    serving(router(), "http://10.0.0.5:9000")
    owner = reconcile()

    assert owner.status["replicas"] == {"desired": 2, "scheduled": 2, "ready": 2}
    assert owner.status["endpoints"] == ["http://10.0.0.5:8000", "http://10.0.0.5:8001"]
    assert [(p["workload"], p["role"], p["gpus"]) for p in owner.status["placements"]] == [
        ("chat-serve-0", "serve", [0]),
        ("chat-serve-1", "serve", [1]),
        (ROUTER, "router", []),
    ]
    reconcile()
    assert len(owned()) == 3  # a second pass neither scales the router down nor adds a replica


def test_backends_list_exactly_the_ready_replicas_and_follow_one_going_unready(add_node):
    add_node("gpu-a", gpus=4)
    create(deployment("chat", replicas=3))
    reconcile()
    assert router().status["backends"] == []
    first, second, third = replicas()
    serving(first, "http://10.0.0.5:8000")
    serving(second, "http://10.0.0.5:8001")
    reconcile()
    assert router().status["backends"] == [
        {"name": "chat-serve-0", "url": "http://10.0.0.5:8000"},
        {"name": "chat-serve-1", "url": "http://10.0.0.5:8001"},
    ]

    stopped(first)
    reconcile()
    assert router().status["backends"] == [{"name": "chat-serve-1", "url": "http://10.0.0.5:8001"}]
    version = router().resource_version
    reconcile()
    assert router().resource_version == version  # unchanged backends are not written again


@pytest.fixture
def node_api(token_for) -> Api:
    """gpu-a registered through the agent protocol: the node token its agent holds."""
    response = Api(token_for("agent")).post(
        "/agent/register", {"name": "gpu-a", "devices": simulated_devices(2)}
    )
    assert response.status_code == 200, response.content
    return Api(response.json()["token"])


def test_an_agent_writing_the_routers_status_keeps_its_backends(node_api):
    create(deployment("chat", replicas=2))
    reconcile()
    serving(replicas()[0], "http://10.0.0.5:8000")
    reconcile()
    kept = [{"name": "chat-serve-0", "url": "http://10.0.0.5:8000"}]
    assert router().status["backends"] == kept

    status = {
        "phase": "Running",
        "endpoint": "http://10.0.0.5:9000",
        "conditions": [{"type": "Ready", "status": "True", "reason": "Serving", "message": ""}],
    }
    response = node_api.put(f"/workloads/{ROUTER}/status", {"status": status})
    assert response.status_code == 200, response.content
    assert response.json()["status"]["backends"] == kept
    assert router().status == {**status, "backends": kept}

    forged = {**status, "backends": [{"name": "elsewhere", "url": "http://203.0.113.9:80"}]}
    assert node_api.put(f"/workloads/{ROUTER}/status", {"status": forged}).status_code == 200
    assert router().status["backends"] == kept


# --- status.url and Ready ----------------------------------------------------------------------


def test_status_url_is_the_routers_endpoint_once_it_is_ready_and_ready_waits_for_it(add_node):
    add_node("gpu-a", gpus=2)
    create(deployment("chat", replicas=2))
    reconcile()
    for index, replica in enumerate(replicas()):
        serving(replica, f"http://10.0.0.5:{8000 + index}")
    owner = reconcile()

    assert "url" not in owner.status
    ready = condition(owner, "Ready")
    assert (ready["status"], ready["reason"], ready["message"]) == (
        "False",
        "RouterNotReady",
        "2/2 replicas serving, router not ready",
    )
    assert condition(owner, "Progressing")["reason"] == "WaitingForRouter"

    serving(router(), "http://10.0.0.5:9000")
    owner = reconcile()
    assert owner.status["url"] == "http://10.0.0.5:9000"
    ready = condition(owner, "Ready")
    assert (ready["status"], ready["message"]) == ("True", "2/2 replicas serving, router ready")
    assert condition(owner, "Progressing")["reason"] == "Converged"

    stopped(router())
    assert "url" not in reconcile().status


def test_without_a_router_status_url_is_the_one_ready_replicas_endpoint(add_node):
    add_node("gpu-a", gpus=2)
    create(deployment("chat", replicas=1))
    assert "url" not in reconcile().status
    (replica,) = replicas()
    serving(replica, "http://10.0.0.5:8000")
    owner = reconcile()
    assert owner.status["url"] == "http://10.0.0.5:8000"
    assert condition(owner, "Ready")["message"] == "1/1 replicas serving"


# --- lost nodes and deletion -------------------------------------------------------------------


def test_a_router_whose_node_is_lost_is_replaced_on_a_ready_node(add_node):
    add_node("gpu-a", gpus=2)
    add_node("cpu-b", gpus=0)
    create(deployment("chat", replicas=2))
    reconcile()
    lost = router()
    assert lost.node_name == "cpu-b"  # the node with the least free GPU memory: none at all
    kept = {w.uid for w in replicas()}

    age_lease("cpu-b")
    nodes.check_heartbeats()
    reconcile()

    replaced = router()
    assert replaced.node_name == "gpu-a" and replaced.uid != lost.uid
    assert {w.uid for w in replicas()} == kept  # its replicas' nodes are fine: they stay
    rescheduling = Event.objects.get(kind="Deployment", name="chat", reason="Rescheduling")
    assert rescheduling.message == f"workload/{ROUTER} lost its node cpu-b (not ready or gone)"
    assert reasons().count("RouterPlaced") == 2


def test_deleting_the_deployment_removes_its_router(add_node):
    add_node("gpu-a", gpus=2)
    create(deployment("chat", replicas=2))
    reconcile()
    assert router() is not None
    store.request_delete(store.get("Deployment", "chat"))
    owners.reconcile("Deployment", "chat")
    assert owned() == [] and store.find("Deployment", "chat") is None


# --- following a spec change -------------------------------------------------------------------


def test_a_new_cache_policy_and_api_key_reach_the_running_router_and_replicas(add_node):
    add_node("gpu-a", gpus=2)
    create(deployment("chat", replicas=2))
    reconcile()
    before = {w.name: w.generation for w in owned()}

    create(
        deployment("chat", replicas=2, policies={"cache": "session-ttl"}, serving={"apiKeys": [PLAIN_KEY]})
    )
    reconcile()

    digest = apikeys.digest(PLAIN_KEY)
    for workload in owned():  # none served yet: nothing to keep up, all restart at once
        assert workload.generation == before[workload.name] + 1, workload.name
        assert workload.spec["config"]["cache"]["plugin"] == "session-ttl"
        assert workload.spec["config"]["apiKeys"] == [digest]
    assert "Reconfigured" in reasons()
    versions = {w.name: w.resource_version for w in owned()}
    reconcile()
    assert {w.name: w.resource_version for w in owned()} == versions  # once only


def test_serving_replicas_take_a_new_config_one_at_a_time(add_node):
    add_node("gpu-a", gpus=2)
    create(deployment("chat", replicas=2))
    reconcile()
    for index, replica in enumerate(replicas()):
        serving(replica, f"http://10.0.0.5:{8000 + index}")
    reconcile()

    create(deployment("chat", replicas=2, policies={"cache": "prefix-aware"}))
    reconcile()
    first, second = replicas()
    assert (first.generation, second.generation) == (2, 1)  # one restarts, the other serves on
    assert [b["name"] for b in router().status["backends"]] == ["chat-serve-1"]

    reconcile()
    assert replicas()[1].generation == 1  # still waiting: serve-0 has not served its new spec

    serving(first, "http://10.0.0.5:8000")
    reconcile()
    assert replicas()[1].generation == 2
    assert "prefix-aware" == replicas()[1].spec["config"]["cache"]["plugin"]


def test_a_training_job_keeps_the_config_it_started_with(add_node):
    add_node("gpu-a", gpus=1)
    job = {
        "apiVersion": "flotilla.dev/v1",
        "kind": "TrainingJob",
        "metadata": {"name": "pretrain"},
        "spec": {
            "model": {"source": "builtin:tiny-llama"},
            "data": {"source": "builtin:synthetic"},
            "steps": 10,
        },
    }
    create(job)
    owners.reconcile("TrainingJob", "pretrain")
    create({**job, "spec": {**job["spec"], "steps": 20}})
    owners.reconcile("TrainingJob", "pretrain")
    (workload,) = Resource.objects.filter(kind="Workload", owner_ref="TrainingJob/pretrain")
    assert workload.generation == 1 and workload.spec["config"]["steps"] == 10  # a restart would lose the run


# --- the CLI and the OpenAPI document ----------------------------------------------------------


def test_get_deployments_has_a_url_column_and_describe_a_url_line(add_node):
    add_node("gpu-a", gpus=2)
    create(deployment("chat", replicas=2), deployment("idle", replicas=1))
    reconcile()
    for replica in replicas():
        serving(replica, "http://10.0.0.5:8000")
    serving(router(), "http://10.0.0.5:9000")
    documents = [store.to_document(reconcile("chat")), store.to_document(store.get("Deployment", "idle"))]

    header, chat, idle = resource_table("Deployment", documents).splitlines()
    assert header.split() == ["NAME", "READY", "SCHEDULED", "GENERATION", "URL", "AGE"]
    assert chat.split()[:5] == ["chat", "2/2", "True", "1/1", "http://10.0.0.5:9000"]
    assert idle.split()[4] == "-"
    assert "URL:           http://10.0.0.5:9000" in describe(documents[0], [])
    assert "URL:           <none>" in describe(documents[1], [])


def test_the_openapi_document_describes_api_keys_the_router_role_url_and_backends():
    schemas = openapi.document()["components"]["schemas"]
    assert "apiKeys" in schemas["ServingSpec"]["properties"]
    assert schemas["DeploymentSpec"]["properties"]["serving"] == {"$ref": "#/components/schemas/ServingSpec"}
    assert "router" in schemas["WorkloadSpec"]["properties"]["role"]["enum"]
    assert schemas["Deployment"]["properties"]["status"]["$ref"] == "#/components/schemas/DeploymentStatus"
    assert "url" in schemas["DeploymentStatus"]["properties"]
    assert (
        "router"
        in schemas["DeploymentStatus"]["properties"]["placements"]["items"]["properties"]["role"]["enum"]
    )
    assert schemas["Workload"]["properties"]["status"]["$ref"] == "#/components/schemas/WorkloadStatus"
    backends = schemas["WorkloadStatus"]["properties"]["backends"]
    assert backends["items"]["required"] == ["name", "url"]
