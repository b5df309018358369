"""The REST API's read streams and side doors: watch, events, plugins, the agent protocol, OpenAPI."""

from __future__ import annotations

import time
from typing import Any

import pytest

from common.specs import KINDS
from controlplane import watch
from controlplane.auth import create_token
from controlplane.conditions import is_true
from controlplane.controllers import owners
from controlplane.models import Change, Resource
from tests.conftest import Api, deployment, simulated_devices
from tests.test_api import error_of, policy


def watch_kind(api: Api, plural: str, since: int | str, **params: Any) -> dict[str, Any]:
    response = api.get(f"/{plural}", watch="true", resourceVersion=since, timeoutSeconds=1, **params)
    assert response.status_code == 200, response.content
    return response.json()


def list_version(api: Api, plural: str) -> int:
    return int(api.get(f"/{plural}").json()["metadata"]["resourceVersion"])


def names_of(events: list[dict[str, Any]]) -> list[str]:
    return [event["object"]["metadata"]["name"] for event in events]


# --- watch ------------------------------------------------------------------------------


def test_a_watch_returns_the_changes_after_a_resource_version(viewer, operator):
    operator.apply(deployment("before"))
    since = list_version(viewer, "deployments")
    operator.apply(deployment())
    operator.apply(deployment(replicas=3))
    operator.delete("/deployments/chat-small")
    owners.reconcile("Deployment", "chat-small")  # no Workloads: the finalizer is lifted at once

    body = watch_kind(viewer, "deployments", since)
    events = body["events"]
    assert [e["type"] for e in events][:2] == ["ADDED", "MODIFIED"]
    assert events[-1]["type"] == "DELETED"
    assert set(names_of(events)) == {"chat-small"}
    assert events[0]["object"]["spec"]["replicas"] == 2
    assert events[1]["object"]["spec"]["replicas"] == 3
    assert events[-1]["object"]["metadata"]["deletionTimestamp"]
    assert int(body["resourceVersion"]) == int(events[-1]["object"]["metadata"]["resourceVersion"])


def test_a_watch_sees_only_its_own_kind(viewer, operator):
    since = list_version(viewer, "deployments")
    operator.apply([policy(), deployment()])
    assert names_of(watch_kind(viewer, "deployments", since)["events"]) == ["chat-small"]
    assert names_of(watch_kind(viewer, "policies", since)["events"]) == ["packed"]


def test_a_watch_resumes_from_the_version_it_returned(viewer, operator):
    since = list_version(viewer, "deployments")
    operator.apply(deployment("one"))
    first = watch_kind(viewer, "deployments", since)
    operator.apply(deployment("two"))
    second = watch_kind(viewer, "deployments", first["resourceVersion"])
    assert names_of(first["events"]) == ["one"]
    assert names_of(second["events"]) == ["two"]


def test_a_watch_with_nothing_new_returns_no_events_after_the_timeout(viewer, operator):
    operator.apply(deployment())
    since = list_version(viewer, "deployments")
    started = time.monotonic()
    body = watch_kind(viewer, "deployments", since)
    assert time.monotonic() - started >= 0.9
    assert body["events"] == []
    assert int(body["resourceVersion"]) >= since


def test_a_watch_filters_by_label_selector(viewer, operator):
    since = list_version(viewer, "deployments")
    other = deployment("ads")
    other["metadata"]["labels"] = {"team": "ads"}
    operator.apply([deployment(), other])
    body = watch_kind(viewer, "deployments", since, labelSelector="team=ads")
    assert names_of(body["events"]) == ["ads"]


def test_a_watch_from_a_pruned_resource_version_is_gone(viewer, operator, settings):
    settings.FLOTILLA_WATCH_RETENTION = 2
    operator.apply(deployment("first"))
    since = list_version(viewer, "deployments")
    for i in range(5):
        operator.apply(deployment(f"d{i}"))
    assert watch.prune() > 0

    error = error_of(viewer.get("/deployments", watch="true", resourceVersion=since, timeoutSeconds=1), 410)
    assert error["code"] == "Gone"
    assert any(d["field"] == "resourceVersion" and d["fix"] for d in error["details"])
    latest = list_version(viewer, "deployments")
    assert watch_kind(viewer, "deployments", latest)["events"] == []


def test_a_watch_just_before_the_oldest_kept_change_is_not_gone(viewer, operator, settings):
    settings.FLOTILLA_WATCH_RETENTION = 2
    for i in range(6):
        operator.apply(policy(f"p{i}"))
    watch.prune()
    oldest = Change.objects.order_by("id").first().id
    body = watch_kind(viewer, "policies", oldest - 1)
    assert [e["object"]["metadata"]["name"] for e in body["events"]][0] == "p3"


def test_a_watch_rejects_a_resource_version_that_is_not_a_number(viewer):
    error = error_of(viewer.get("/deployments", watch="true", resourceVersion="latest"), 422)
    assert any(d["field"] == "resourceVersion" for d in error["details"])


def test_workloads_can_be_listed_and_watched_for_one_node(viewer, operator, add_node):
    add_node("gpu-a", gpus=1)
    add_node("gpu-b", gpus=1)
    since = list_version(viewer, "workloads")
    operator.apply(deployment())
    owners.reconcile("Deployment", "chat-small")
    # One replica on each node, and the router (no GPU) on gpu-a as well.
    on_a = list(
        Resource.objects.filter(kind="Workload", node_name="gpu-a")
        .order_by("id")
        .values_list("name", flat=True)
    )
    assert len(on_a) == 2

    listed = viewer.get("/workloads", fieldSelector="spec.nodeName=gpu-a").json()["items"]
    assert [item["metadata"]["name"] for item in listed] == sorted(on_a)

    events = watch_kind(viewer, "workloads", since, fieldSelector="spec.nodeName=gpu-a")["events"]
    assert names_of(events) == on_a
    assert all(e["type"] == "ADDED" and e["object"]["spec"]["nodeName"] == "gpu-a" for e in events)
    assert len(watch_kind(viewer, "workloads", since)["events"]) == 3


def test_it_refuses_a_field_selector_it_cannot_serve(viewer):
    error = error_of(viewer.get("/workloads", fieldSelector="spec.role=serve"), 422)
    assert "spec.role" in error["message"]


# --- events and plugins ------------------------------------------------------------------


def test_a_scheduled_deployment_has_a_scheduled_event(viewer, operator, add_node):
    add_node("gpu-a")
    operator.apply(deployment())
    owners.reconcile("Deployment", "chat-small")
    items = viewer.get("/deployments/chat-small/events").json()["items"]
    scheduled = [e for e in items if e["reason"] == "Scheduled"]
    assert len(scheduled) == 1
    assert scheduled[0]["involvedObject"]["name"] == "chat-small"
    assert "binpack" in scheduled[0]["message"]
    assert is_true(viewer.get("/deployments/chat-small").json()["status"], "Scheduled")


def test_an_unschedulable_deployment_says_what_is_missing(viewer, operator):
    operator.apply(deployment())
    owners.reconcile("Deployment", "chat-small")
    items = viewer.get("/deployments/chat-small/events").json()["items"]
    failed = [e for e in items if e["reason"] == "FailedScheduling"]
    assert failed and failed[0]["type"] == "Warning"
    assert "0/2 scheduled; 2 replicas unplaced" in failed[0]["message"]


def test_recent_events_are_listed_across_objects(viewer, operator, add_node):
    add_node("gpu-a")
    operator.apply(deployment())
    owners.reconcile("Deployment", "chat-small")
    items = viewer.get("/events").json()["items"]
    involved = {(e["involvedObject"]["kind"], e["involvedObject"]["name"], e["reason"]) for e in items}
    assert ("Deployment", "chat-small", "Scheduled") in involved
    assert ("Node", "gpu-a", "Registered") in involved
    only_nodes = viewer.get("/events", kind="Node").json()["items"]
    assert {e["involvedObject"]["kind"] for e in only_nodes} == {"Node"}


def test_it_lists_the_plugins_with_their_params_schema(viewer):
    items = viewer.get("/plugins").json()["items"]
    binpack = next(p for p in items if p["name"] == "binpack")
    assert binpack["kind"] == "scheduler"
    assert binpack["description"]
    assert binpack["paramsSchema"]["properties"]["spread"]["type"] == "boolean"


# --- agent protocol ---------------------------------------------------------------------


def test_registering_an_agent_creates_a_ready_node_with_devices(admin):
    response = admin.post("/agent/register", {"name": "gpu-a", "devices": simulated_devices(2)})
    assert response.status_code == 200
    body = response.json()
    assert body["heartbeatSeconds"] > 0
    node = admin.get("/nodes/gpu-a").json()
    assert [d["index"] for d in node["status"]["devices"]] == [0, 1]
    assert is_true(node["status"], "Ready")
    assert node["spec"]["unschedulable"] is False


def test_re_registering_keeps_the_operators_spec_edits(admin, operator):
    admin.post("/agent/register", {"name": "gpu-a", "devices": simulated_devices(1)})
    cordon = {
        "apiVersion": "flotilla.dev/v1",
        "kind": "Node",
        "metadata": {"name": "gpu-a"},
        "spec": {"unschedulable": True, "labels": {"zone": "b"}},
    }
    assert operator.apply(cordon).json()["results"][0]["action"] == "configured"

    response = admin.post("/agent/register", {"name": "gpu-a", "devices": simulated_devices(4)})
    assert response.status_code == 200
    node = admin.get("/nodes/gpu-a").json()
    assert node["spec"]["unschedulable"] is True
    assert node["spec"]["labels"] == {"zone": "b"}
    assert len(node["status"]["devices"]) == 4


def test_an_agent_token_registers_and_heartbeats_its_node(db):
    token, _ = create_token("agent-a", "agent", node_name="gpu-a")
    agent = Api(token)
    registered = agent.post("/agent/register", {"name": "gpu-a", "devices": simulated_devices(1)})
    assert registered.status_code == 200
    node_agent = Api(registered.json()["token"])  # registering rotates the node's credential
    assert node_agent.post("/agent/heartbeat", {"name": "gpu-a"}).status_code == 200
    error_of(agent.post("/agent/heartbeat", {"name": "gpu-a"}), 401)
    error_of(node_agent.apply(deployment()), 403)


def test_an_agent_token_may_not_heartbeat_another_node(db, add_node):
    add_node("gpu-b")
    token, _ = create_token("agent-a", "agent", node_name="gpu-a")
    error_of(Api(token).post("/agent/heartbeat", {"name": "gpu-b"}), 403)


def test_an_operator_may_not_register_a_node(operator):
    error_of(operator.post("/agent/register", {"name": "gpu-a"}), 403)
    assert not Resource.objects.filter(kind="Node").exists()


def test_a_heartbeat_for_an_unknown_node_is_404(admin):
    error = error_of(admin.post("/agent/heartbeat", {"name": "ghost"}), 404)
    assert "node/ghost" in error["message"]


@pytest.mark.parametrize("name", ["GPU_A", "", "a" * 64, None])
def test_it_rejects_an_invalid_node_name(admin, name):
    error = error_of(admin.post("/agent/register", {"name": name}), 422)
    assert any(d["field"] == "name" for d in error["details"])
    assert not Resource.objects.filter(kind="Node").exists()


@pytest.mark.parametrize(
    "body",
    [
        {"name": "gpu-a", "labels": {"bad key!": "x"}},
        {"name": "gpu-a", "labels": ["zone"]},
        {"name": "gpu-a", "devices": [{"index": "zero", "type": "H100"}]},
        {"name": "gpu-a", "devices": ["H100"]},
        {"name": "gpu-a", "devices": {"0": "H100"}},
    ],
    ids=["bad-label-key", "labels-not-a-mapping", "index-not-a-number", "device-not-a-mapping", "not-a-list"],
)
def test_it_rejects_a_malformed_registration(admin, body):
    error_of(admin.post("/agent/register", body), 422)
    assert not Resource.objects.filter(kind="Node").exists()


@pytest.mark.parametrize("devices", ["H100", [{"index": "zero", "type": "H100"}], ["H100"]])
def test_it_rejects_malformed_devices_in_a_heartbeat(admin, add_node, devices):
    add_node("gpu-a", gpus=1)
    error_of(admin.post("/agent/heartbeat", {"name": "gpu-a", "devices": devices}), 422)
    assert [d["index"] for d in admin.get("/nodes/gpu-a").json()["status"]["devices"]] == [0]


def test_a_bad_registration_cannot_break_scheduling_for_the_fleet(admin, operator, add_node):
    add_node("gpu-a")
    admin.post("/agent/register", {"name": "gpu-b", "devices": [{"index": "zero", "type": "H100"}]})
    operator.apply(deployment(replicas=1))
    owners.reconcile("Deployment", "chat-small")
    assert is_true(operator.get("/deployments/chat-small").json()["status"], "Scheduled")


# --- OpenAPI ----------------------------------------------------------------------------


def test_it_serves_an_openapi_document_without_a_token(anonymous):
    response = anonymous.client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.1")
    paths = document["paths"]
    assert "post" in paths["/api/v1/apply"]
    schemas = document["components"]["schemas"]
    for kind, info in KINDS.items():
        assert "get" in paths[f"/api/v1/{info.plural}"]
        assert {"get", "put", "delete"} <= set(paths[f"/api/v1/{info.plural}/{{name}}"])
        assert schemas[kind]["properties"]["spec"] == {"$ref": f"#/components/schemas/{kind}Spec"}
        assert schemas[f"{kind}Spec"]["type"] == "object"
    assert len(KINDS) == 7
    assert "replicas" in schemas["DeploymentSpec"]["properties"]


def test_a_watch_ahead_of_the_server_is_gone(viewer):
    ahead = watch.current_version() + 1000
    error = error_of(
        viewer.get("/deployments", watch="true", resourceVersion=str(ahead), timeoutSeconds="1"), 410
    )
    assert error["code"] == "Gone"
    assert "ahead" in error["message"]


def test_events_can_be_filtered_by_a_singular_lower_case_kind(operator, add_node):
    add_node("gpu-a", gpus=1)
    operator.apply(deployment("chat-small", replicas=1))
    owners.reconcile("Deployment", "chat-small")
    response = operator.get("/events", kind="deployment")
    assert response.status_code == 200
    items = response.json()["items"]
    assert items and {e["involvedObject"]["kind"] for e in items} == {"Deployment"}


def test_bootstrap_force_issues_a_new_admin_token_when_one_exists(db):
    import json
    from io import StringIO

    from django.core.management import call_command

    first = StringIO()
    call_command("flotilla_bootstrap", stdout=first)
    assert json.loads(first.getvalue())["token"].startswith("flt_")
    again = StringIO()
    call_command("flotilla_bootstrap", stdout=again)
    assert json.loads(again.getvalue())["token"] is None
    forced = StringIO()
    call_command("flotilla_bootstrap", "--force", stdout=forced)
    token = json.loads(forced.getvalue())["token"]
    assert Api(token).get("/tokens").status_code == 200
