"""Per-node credentials: a bootstrap token registers, the node token it returns reaches
only its own Node and Workloads, and a stolen node token cannot touch anything else."""

from __future__ import annotations

from datetime import timedelta

import pytest

from common.timeutil import now
from controlplane.apply import apply
from controlplane.controllers import nodes, owners
from controlplane.models import NodeLease, Resource
from tests.conftest import Api, age_lease, deployment, simulated_devices
from tests.test_api import error_of


@pytest.fixture
def bootstrap(token_for) -> Api:
    return Api(token_for("agent"))


def register(api: Api, name: str, gpus: int = 2) -> dict:
    response = api.post("/agent/register", {"name": name, "devices": simulated_devices(gpus)})
    assert response.status_code == 200, response.content
    return response.json()


@pytest.fixture
def two_nodes(bootstrap) -> tuple[Api, Api]:
    a = Api(register(bootstrap, "gpu-a")["token"])
    b = Api(register(bootstrap, "gpu-b")["token"])
    apply([deployment("chat", replicas=4)], actor="test")
    owners.reconcile("Deployment", "chat")
    assert {w.node_name for w in Resource.objects.filter(kind="Workload")} == {"gpu-a", "gpu-b"}
    return a, b


def workload_on(node: str) -> str:
    return Resource.objects.filter(kind="Workload", node_name=node).values_list("name", flat=True)[0]


def test_registration_answers_with_a_node_token_bound_to_that_node(bootstrap):
    result = register(bootstrap, "gpu-a")
    assert result["token"].startswith("flt_")
    assert result["node"]["metadata"]["name"] == "gpu-a"
    assert Api(result["token"]).post("/agent/heartbeat", {"name": "gpu-a"}).status_code == 200


def test_a_bootstrap_token_can_register_but_not_heartbeat_or_read(bootstrap):
    register(bootstrap, "gpu-a")
    error_of(bootstrap.post("/agent/heartbeat", {"name": "gpu-a"}), 403)
    error_of(bootstrap.get("/nodes"), 403)
    error_of(bootstrap.get("/deployments"), 403)


def test_a_node_token_reads_its_own_node_and_workloads_only(two_nodes):
    a, _ = two_nodes
    assert a.get("/nodes/gpu-a").status_code == 200
    error_of(a.get("/nodes/gpu-b"), 403)
    error_of(a.get("/nodes"), 403)
    listed = a.get("/workloads").json()["items"]
    assert listed and {w["spec"]["nodeName"] for w in listed} == {"gpu-a"}
    error_of(a.get("/workloads", fieldSelector="spec.nodeName=gpu-b"), 403)
    assert a.get(f"/workloads/{workload_on('gpu-a')}").status_code == 200
    error_of(a.get(f"/workloads/{workload_on('gpu-b')}"), 403)


def test_a_node_token_watches_only_its_own_workloads(two_nodes):
    a, _ = two_nodes
    events = a.get("/workloads", watch="true", resourceVersion="0", timeoutSeconds="1").json()["events"]
    assert events and {e["object"]["spec"]["nodeName"] for e in events} == {"gpu-a"}


def test_a_node_token_writes_status_of_its_own_objects_only(two_nodes):
    a, _ = two_nodes
    status = {"status": {"phase": "Running"}}
    assert a.put(f"/workloads/{workload_on('gpu-a')}/status", status).status_code == 200
    assert a.put("/nodes/gpu-a/status", status).status_code == 200
    error_of(a.put(f"/workloads/{workload_on('gpu-b')}/status", status), 403)
    error_of(a.put("/nodes/gpu-b/status", status), 403)


def test_a_stolen_node_token_cannot_touch_any_spec(two_nodes):
    a, _ = two_nodes
    error_of(a.apply(deployment("evil")), 403)
    error_of(a.delete("/deployments/chat"), 403)
    error_of(a.get("/deployments"), 403)
    error_of(a.get("/events"), 403)
    error_of(a.post("/agent/register", {"name": "gpu-b", "devices": simulated_devices(1)}), 403)
    error_of(a.post("/agent/heartbeat", {"name": "gpu-b"}), 403)
    error_of(a.post("/tokens", {"role": "admin"}), 403)
    assert not Resource.objects.filter(name="evil").exists()


def test_re_registering_keeps_the_node_identity_and_rotates_the_credential(bootstrap):
    first = register(bootstrap, "gpu-a")
    again = register(Api(first["token"]), "gpu-a")
    assert again["node"]["metadata"]["uid"] == first["node"]["metadata"]["uid"]
    assert again["token"] != first["token"]
    error_of(Api(first["token"]).post("/agent/heartbeat", {"name": "gpu-a"}), 401)
    assert Api(again["token"]).post("/agent/heartbeat", {"name": "gpu-a"}).status_code == 200


def test_a_bootstrap_token_cannot_take_over_a_live_node_but_can_recover_a_silent_one(bootstrap):
    first = register(bootstrap, "gpu-a")
    error = error_of(bootstrap.post("/agent/register", {"name": "gpu-a", "devices": []}), 403)
    assert "alive" in error["message"]
    age_lease("gpu-a", 3600)
    nodes.check_heartbeats()
    recovered = register(bootstrap, "gpu-a")
    assert recovered["node"]["metadata"]["uid"] == first["node"]["metadata"]["uid"]


def test_a_heartbeat_with_bad_telemetry_still_counts(bootstrap):
    node = Api(register(bootstrap, "gpu-a")["token"])
    age_lease("gpu-a", 300)
    response = node.post("/agent/heartbeat", {"name": "gpu-a", "telemetry": {"devices": [{"index": -1}]}})
    assert response.status_code == 200
    assert response.json()["telemetryRejected"]["code"] == "Invalid"
    assert NodeLease.objects.get(node_name="gpu-a").renewed_at > now() - timedelta(seconds=30)
