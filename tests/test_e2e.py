"""End to end, against real processes: gunicorn, a Celery worker and beat, and
simulated agents talking HTTP. Runs on whatever back end the environment names
(PostgreSQL + Redis in CI's first pass, SQLite + the filesystem broker in the
second), so the same assertions hold on both.
"""

from __future__ import annotations

import os
import signal

import pytest
import yaml

from common.client import ClientError
from tests.conftest import deployment
from tests.e2e import backend_label, condition, running_stack, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("stack")) as running:
        running.start_agent("gpu-a", "8xH100")
        running.start_agent("gpu-b", "8xH100")
        wait_for(lambda: running.node_ready("gpu-a") and running.node_ready("gpu-b"), what="agents")
        yield running


def apply(live, *docs, dry_run=False):
    return live.client.apply(yaml.safe_dump_all(list(docs)), dry_run=dry_run)["results"]


def scheduled(live, name):
    document = live.client.get("deployments", name)
    return document if condition(document, "Scheduled") == "True" else None


def converged(live, name):
    """The Deployment once nothing more is under way: scheduled, its replicas Ready, and
    Progressing=False (Converged), so no controller status write is still coming."""
    document = scheduled(live, name)
    if document is None or condition(document, "Ready") != "True":
        return None
    return document if condition(document, "Progressing") == "False" else None


def owned(live, name):
    """Every Workload of Deployment ``name``: its replicas and, with several, its router."""
    return live.client.list("workloads", labelSelector=f"flotilla.dev/owner={name}")["items"]


def workloads_of(live, name):
    """The replicas (the router is no replica: tests/test_routers_controller.py)."""
    return [w for w in owned(live, name) if w["spec"]["role"] != "router"]


def test_it_reports_which_back_end_it_runs_on(live):
    # Not a behaviour check: makes the CI log say which pass this is.
    print(f"end-to-end back end: {backend_label()}")
    assert live.client.list("nodes")["items"]


def test_an_applied_deployment_gets_workloads_and_is_scheduled_within_seconds(live):
    results = apply(live, deployment("e2e-chat", replicas=3))
    assert results[0]["action"] == "created" and results[0]["generation"] == 1
    document = wait_for(lambda: scheduled(live, "e2e-chat"), timeout=15, what="Scheduled=True")
    workloads = workloads_of(live, "e2e-chat")
    assert len(workloads) == 3
    assert {w["spec"]["nodeName"] for w in workloads} <= {"gpu-a", "gpu-b"}
    assert all(len(w["spec"]["gpus"]) == 1 for w in workloads)
    routers = [w for w in owned(live, "e2e-chat") if w["spec"]["role"] == "router"]
    assert [(w["spec"]["runtime"], w["spec"]["gpus"]) for w in routers] == [("route", [])]
    assert document["status"]["observedGeneration"] == 1


def test_applying_the_same_document_again_is_unchanged_and_keeps_the_generation(live):
    apply(live, deployment("e2e-same", replicas=1))
    # converged, not only Scheduled: a controller's status write in between would move the
    # resourceVersion that this test checks apply leaves alone (seen on a loaded machine)
    before = wait_for(lambda: converged(live, "e2e-same"), what="Ready and converged")
    results = apply(live, deployment("e2e-same", replicas=1))
    assert results[0]["action"] == "unchanged"
    after = live.client.get("deployments", "e2e-same")
    assert after["metadata"]["generation"] == before["metadata"]["generation"] == 1
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


def test_an_edit_is_configured_and_observed_generation_catches_up(live):
    apply(live, deployment("e2e-edit", replicas=1))
    wait_for(lambda: scheduled(live, "e2e-edit"), what="Scheduled")
    results = apply(live, deployment("e2e-edit", replicas=2))
    assert results[0]["action"] == "configured" and results[0]["generation"] == 2

    def caught_up():
        document = live.client.get("deployments", "e2e-edit")
        return document["status"].get("observedGeneration") == 2 and len(workloads_of(live, "e2e-edit")) == 2

    wait_for(caught_up, what="observedGeneration 2 and 2 workloads")


def test_a_stale_replace_is_refused_with_409(live):
    apply(live, deployment("e2e-stale", replicas=1))
    # Let the Deployment converge (finalizer, Scheduled, then its replica Ready), or a status
    # write in between (the agent reporting the Workload Ready) races our PUT with a 409.
    current = wait_for(lambda: converged(live, "e2e-stale"), what="Ready and converged")
    body = {k: current[k] for k in ("apiVersion", "kind", "metadata", "spec")}
    body["metadata"] = {"name": "e2e-stale", "resourceVersion": current["metadata"]["resourceVersion"]}
    body["spec"]["replicas"] = 2
    assert (
        live.client.request("PUT", "/api/v1/deployments/e2e-stale", json=body)["metadata"]["generation"] == 2
    )
    body["spec"]["replicas"] = 3  # same, now stale, resourceVersion
    with pytest.raises(ClientError) as caught:
        live.client.request("PUT", "/api/v1/deployments/e2e-stale", json=body)
    assert caught.value.status == 409
    assert "resourceVersion" in str(caught.value)


def test_delete_answers_202_then_the_deployment_and_its_workloads_are_gone(live):
    apply(live, deployment("e2e-gone", replicas=2))
    wait_for(lambda: len(workloads_of(live, "e2e-gone")) == 2, what="2 workloads")
    response = live.client.delete("deployments", "e2e-gone")
    assert response["_status"] == 202
    assert response["object"]["metadata"]["deletionTimestamp"]

    def gone():
        try:
            live.client.get("deployments", "e2e-gone")
        except ClientError as exc:
            return exc.status == 404
        return False

    wait_for(gone, what="deployment gone")
    assert owned(live, "e2e-gone") == []  # the replicas and the router


def test_invalid_documents_get_a_4xx_naming_the_field_and_nothing_is_written(live):
    good = deployment("e2e-valid-one")
    bad = deployment("e2e-invalid", replicas=-1)
    with pytest.raises(ClientError) as caught:
        apply(live, good, bad)
    assert caught.value.status == 422
    details = caught.value.body["error"]["details"]
    assert details[0]["document"] == 1 and details[0]["field"] == "spec.replicas"
    names = {d["metadata"]["name"] for d in live.client.list("deployments")["items"]}
    assert "e2e-valid-one" not in names and "e2e-invalid" not in names


def test_an_unschedulable_deployment_says_what_is_missing_and_schedules_when_capacity_appears(live):
    doc = deployment("e2e-l4", replicas=1, resources={"gpusPerReplica": 2, "gpuTypes": ["L4"]})
    apply(live, doc)

    def unschedulable():
        document = live.client.get("deployments", "e2e-l4")
        return condition(document, "Scheduled") == "False" and document

    document = wait_for(unschedulable, what="Scheduled=False")
    message = next(c for c in document["status"]["conditions"] if c["type"] == "Scheduled")["message"]
    assert "2×L4" in message and "free: nothing" in message
    live.start_agent("gpu-l4", "2xL4")
    wait_for(lambda: scheduled(live, "e2e-l4"), timeout=30, what="scheduled on the new L4 node")
    assert {w["spec"]["nodeName"] for w in workloads_of(live, "e2e-l4")} == {"gpu-l4"}


def test_workloads_of_a_node_that_stops_heartbeating_move_to_another_node(live):
    live.start_agent("gpu-doomed", "2xH200")
    wait_for(lambda: live.node_ready("gpu-doomed"), what="gpu-doomed ready")
    apply(live, deployment("e2e-move", replicas=1, resources={"gpuTypes": ["H200"]}))
    wait_for(lambda: scheduled(live, "e2e-move"), what="Scheduled")
    assert workloads_of(live, "e2e-move")[0]["spec"]["nodeName"] == "gpu-doomed"
    live.start_agent("gpu-spare", "2xH200")
    wait_for(lambda: live.node_ready("gpu-spare"), what="gpu-spare ready")
    live.stop_agent("gpu-doomed")
    wait_for(lambda: not live.node_ready("gpu-doomed"), timeout=30, what="gpu-doomed NotReady")

    def moved():
        nodes = {w["spec"]["nodeName"] for w in workloads_of(live, "e2e-move")}
        return nodes == {"gpu-spare"} and scheduled(live, "e2e-move")

    wait_for(moved, timeout=30, what="workload moved to gpu-spare")
    reasons = [e["reason"] for e in live.client.events("deployments", "e2e-move")["items"]]
    assert "Rescheduling" in reasons
    node_reasons = [e["reason"] for e in live.client.events("nodes", "gpu-doomed")["items"]]
    assert "NodeNotReady" in node_reasons


def test_the_cli_applies_gets_describes_and_deletes(live, tmp_path):
    path = tmp_path / "cli.yaml"
    path.write_text(yaml.safe_dump(deployment("e2e-cli", replicas=1)))
    applied = live.cli("apply", "-f", str(path))
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.strip() == "deployment/e2e-cli created"
    assert live.cli("apply", "-f", str(path)).stdout.strip() == "deployment/e2e-cli unchanged"
    wait_for(lambda: scheduled(live, "e2e-cli"), what="Scheduled")
    listing = live.cli("get", "deployments")
    assert listing.returncode == 0 and "e2e-cli" in listing.stdout and "AGE" in listing.stdout
    described = live.cli("describe", "deployment", "e2e-cli")
    assert "Conditions:" in described.stdout and "Scheduled" in described.stdout
    as_yaml = yaml.safe_load(live.cli("get", "deployment", "e2e-cli", "-o", "yaml").stdout)
    assert as_yaml["metadata"]["name"] == "e2e-cli"
    listed = tmp_path / "listed.yaml"
    listed.write_text(live.cli("get", "deployments", "-l", "team=search", "-o", "yaml").stdout)
    again = live.cli("apply", "-f", str(listed))
    assert again.returncode == 0, again.stderr
    assert "deployment/e2e-cli unchanged" in again.stdout
    bad = live.cli("get", "deployment", "no-such-thing")
    assert bad.returncode == 1 and "not found" in bad.stderr
    deleted = live.cli("delete", "deployment", "e2e-cli", "--wait")
    assert deleted.returncode == 0 and "deployment/e2e-cli deleted" in deleted.stdout


def test_a_worker_killed_mid_reconcile_still_converges_after_restart(live, tmp_path):
    marker = tmp_path / "entered"
    policy = {
        "apiVersion": "flotilla.dev/v1",
        "kind": "Policy",
        "metadata": {"name": "stall-once"},
        "spec": {"type": "scheduler", "plugin": "stall-once", "params": {"markerFile": str(marker)}},
    }
    doc = deployment("e2e-crash", replicas=1, policies={"scheduler": "stall-once"})
    apply(live, policy, doc)
    wait_for(marker.exists, timeout=20, what="the reconcile to enter the stalling scheduler")
    live.stack.kill("worker", signal.SIGKILL)  # the whole process group, mid-reconcile
    assert condition(live.client.get("deployments", "e2e-crash"), "Scheduled") != "True"
    assert workloads_of(live, "e2e-crash") == []
    live.stack.start_worker()
    wait_for(lambda: scheduled(live, "e2e-crash"), timeout=60, what="convergence after restart")
    assert len(workloads_of(live, "e2e-crash")) == 1


@pytest.mark.skipif(os.name != "posix", reason="process groups")
def test_no_gpu_is_given_to_two_replicas(live):
    apply(live, *(deployment(f"e2e-pack-{i}", replicas=1) for i in range(4)))
    for i in range(4):
        wait_for(lambda i=i: scheduled(live, f"e2e-pack-{i}") or None, what=f"e2e-pack-{i}")
    bound = [
        (w["spec"]["nodeName"], g) for w in live.client.list("workloads")["items"] for g in w["spec"]["gpus"]
    ]
    assert len(bound) == len(set(bound))
