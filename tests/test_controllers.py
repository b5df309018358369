"""The reconcilers, called directly: owners → scheduler → Workloads, node health, clusters, leases."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from common.specs import WORKLOAD_FINALIZER
from common.timeutil import now, rfc3339
from controlplane import leases, store
from controlplane.apply import apply
from controlplane.conditions import get_condition, is_true, set_condition
from controlplane.controllers import clusters, nodes, owners
from controlplane.models import Change, Event, Lease, NodeLease, Resource
from tests.conftest import age_lease, deployment

pytestmark = pytest.mark.django_db

API_VERSION = "flotilla.dev/v1"


def create(*documents: dict[str, Any]) -> None:
    apply(list(documents), actor="test")


def reconcile(name: str, kind: str = "Deployment") -> Resource:
    owners.reconcile(kind, name)
    return store.get(kind, name)


def owned_by(name: str) -> list[Resource]:
    """Every Workload of the owner ``name``: its replicas and, for a Deployment, its router."""
    found = [w for w in Resource.objects.filter(kind="Workload") if w.spec["owner"]["name"] == name]
    return sorted(found, key=owners.replica_index)


def workloads_of(name: str) -> list[Resource]:
    """The owner's replicas; a Deployment of several also gets a router (test_routers_controller.py)."""
    return [w for w in owned_by(name) if w.spec["role"] != "router"]


def gpus_of(name: str) -> set[tuple[str, int]]:
    return {(w.spec["nodeName"], gpu) for w in workloads_of(name) for gpu in w.spec["gpus"]}


def condition(resource: Resource, type_: str) -> dict[str, Any]:
    found = get_condition(resource.status, type_)
    assert found is not None, f"{resource} has no {type_} condition"
    return found


def reasons(kind: str, name: str) -> list[str]:
    return list(Event.objects.filter(kind=kind, name=name).order_by("id").values_list("reason", flat=True))


def node_doc(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "Node", "metadata": {"name": name}, "spec": spec}


def training_job(name: str = "pretrain", **spec: Any) -> dict[str, Any]:
    body = {
        "model": {"source": "builtin:tiny-llama"},
        "data": {"source": "builtin:tiny-shakespeare"},
        "steps": 100,
        **spec,
    }
    return {"apiVersion": API_VERSION, "kind": "TrainingJob", "metadata": {"name": name}, "spec": body}


# --- scheduling a Deployment --------------------------------------------------------


def test_it_creates_one_workload_per_replica_bound_to_a_node_and_gpus(add_node):
    add_node("gpu-a", gpus=4)
    create(deployment("chat-small", replicas=2))
    owner = reconcile("chat-small")

    workloads = workloads_of("chat-small")
    assert [w.name for w in workloads] == ["chat-small-serve-0", "chat-small-serve-1"]
    assert [(w.spec["nodeName"], w.spec["gpus"], w.spec["role"]) for w in workloads] == [
        ("gpu-a", [0], "serve"),
        ("gpu-a", [1], "serve"),
    ]
    for index, workload in enumerate(workloads):
        assert workload.spec["owner"] == {"kind": "Deployment", "name": "chat-small", "uid": str(owner.uid)}
        assert workload.owner_references == [
            {"kind": "Deployment", "name": "chat-small", "uid": str(owner.uid), "controller": True}
        ]
        assert workload.labels == {owners.OWNER_LABEL: "chat-small", owners.REPLICA_LABEL: str(index)}
        assert workload.spec["runtime"] == "serve"
        assert workload.spec["config"]["model"]["source"] == "builtin:tiny-llama"
        assert workload.node_name == "gpu-a"


def test_it_sets_conditions_and_observed_generation_after_scheduling(add_node):
    add_node("gpu-a")
    create(deployment("chat-small", replicas=2))
    owner = reconcile("chat-small")

    scheduled = condition(owner, "Scheduled")
    assert (scheduled["status"], scheduled["reason"]) == ("True", "Placed")
    assert scheduled["message"] == "2 replicas on 1 nodes, router on gpu-a"
    ready = condition(owner, "Ready")
    assert (ready["status"], ready["reason"], ready["message"]) == (
        "False",
        "Starting",
        "0/2 replicas serving, router not ready",
    )
    progressing = condition(owner, "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("True", "WaitingForReplicas")
    assert owner.status["observedGeneration"] == owner.generation == 1
    assert owner.status["replicas"] == {"desired": 2, "scheduled": 2, "ready": 0}
    assert [(p["node"], p["role"]) for p in owner.status["placements"]] == [
        ("gpu-a", "serve"),
        ("gpu-a", "serve"),
        ("gpu-a", "router"),
    ]


def test_it_records_a_scheduled_event_naming_the_scheduler_and_placements(add_node):
    add_node("gpu-a")
    create(deployment("chat-small", replicas=2))
    reconcile("chat-small")
    event = Event.objects.get(kind="Deployment", name="chat-small", reason="Scheduled")
    assert event.type == "Normal"
    assert event.message == "placed 2 replicas with binpack: gpu-a:[0], gpu-a:[1]"


def test_reconciling_again_changes_nothing(add_node):
    add_node("gpu-a")
    create(deployment("chat-small", replicas=2))
    first = reconcile("chat-small")
    workloads = {w.name: w.resource_version for w in workloads_of("chat-small")}
    changes, event_count = Change.objects.count(), Event.objects.count()

    second = reconcile("chat-small")
    assert second.resource_version == first.resource_version
    assert second.status == first.status
    assert {w.name: w.resource_version for w in workloads_of("chat-small")} == workloads
    assert Change.objects.count() == changes
    assert Event.objects.count() == event_count


def test_observed_generation_catches_up_with_an_edit(add_node):
    add_node("gpu-a")
    create(deployment("chat-small", replicas=1))
    reconcile("chat-small")
    create(deployment("chat-small", replicas=1, slo={"ttftMs": 250}))
    edited = store.get("Deployment", "chat-small")
    assert edited.generation == 2
    assert edited.status["observedGeneration"] == 1
    assert reconcile("chat-small").status["observedGeneration"] == 2


def test_it_reports_ready_when_every_workload_reports_ready(add_node):
    add_node("gpu-a")
    create(deployment("chat-small", replicas=2))
    reconcile("chat-small")
    for workload in owned_by("chat-small"):  # the replicas and the router
        status = {"conditions": [{"type": "Ready", "status": "True", "reason": "Serving"}]}
        store.update_status(workload, status)
    owner = reconcile("chat-small")
    assert condition(owner, "Ready")["reason"] == "AllReplicasReady"
    assert is_true(owner.status, "Ready")
    progressing = condition(owner, "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("False", "Converged")
    assert owner.status["replicas"]["ready"] == 2


def test_a_policy_named_by_the_deployment_chooses_the_scheduler_and_its_params(add_node):
    add_node("gpu-a", gpus=2)
    add_node("gpu-b", gpus=2)
    policy = {
        "apiVersion": API_VERSION,
        "kind": "Policy",
        "metadata": {"name": "spread-out"},
        "spec": {"type": "scheduler", "plugin": "binpack", "params": {"spread": True}},
    }
    create(policy, deployment("chat-small", replicas=2, policies={"scheduler": "spread-out"}))
    reconcile("chat-small")
    assert sorted(w.spec["nodeName"] for w in workloads_of("chat-small")) == ["gpu-a", "gpu-b"]


def test_a_clusters_scheduler_policy_is_the_default_for_its_deployments(add_node):
    policy = {
        "apiVersion": API_VERSION,
        "kind": "Policy",
        "metadata": {"name": "spread-out"},
        "spec": {"type": "scheduler", "plugin": "binpack", "params": {"spread": True}},
    }
    cluster = {
        "apiVersion": API_VERSION,
        "kind": "Cluster",
        "metadata": {"name": "prod"},
        "spec": {"policies": {"scheduler": "spread-out"}},
    }
    create(policy, cluster)
    add_node("gpu-a", gpus=2, cluster="prod")
    add_node("gpu-b", gpus=2, cluster="prod")
    add_node("gpu-c", gpus=8)
    create(deployment("chat-small", replicas=2, cluster="prod"))
    reconcile("chat-small")
    assert sorted(w.spec["nodeName"] for w in workloads_of("chat-small")) == ["gpu-a", "gpu-b"]


# --- scaling ----------------------------------------------------------------------


def test_scaling_up_adds_workloads_and_keeps_the_existing_ones(add_node):
    add_node("gpu-a")
    create(deployment("chat-small", replicas=2))
    reconcile("chat-small")
    before = {w.name: w.uid for w in workloads_of("chat-small")}

    create(deployment("chat-small", replicas=4))
    owner = reconcile("chat-small")
    after = workloads_of("chat-small")
    assert [w.name for w in after] == [f"chat-small-serve-{i}" for i in range(4)]
    assert {w.name: w.uid for w in after if w.name in before} == before
    assert len({gpu for w in after for gpu in w.spec["gpus"]}) == 4
    assert owner.status["replicas"]["scheduled"] == 4


def test_scaling_down_removes_the_highest_replica_indices(add_node):
    add_node("gpu-a")
    create(deployment("chat-small", replicas=4))
    reconcile("chat-small")
    keep = {w.name: w.uid for w in workloads_of("chat-small")[:2]}

    create(deployment("chat-small", replicas=2))
    owner = reconcile("chat-small")
    assert {w.name: w.uid for w in workloads_of("chat-small")} == keep
    assert owner.status["replicas"] == {"desired": 2, "scheduled": 2, "ready": 0}
    assert Event.objects.get(kind="Deployment", name="chat-small", reason="ScaledDown").message == (
        "removed 2 replicas"
    )


def test_scaling_to_zero_removes_every_workload_and_is_ready(add_node):
    add_node("gpu-a")
    create(deployment("chat-small", replicas=2))
    reconcile("chat-small")
    create(deployment("chat-small", replicas=0))
    owner = reconcile("chat-small")
    assert workloads_of("chat-small") == []
    assert condition(owner, "Ready")["reason"] == "ScaledToZero"


def test_scaling_back_up_reuses_freed_gpus(add_node):
    add_node("gpu-a", gpus=2)
    create(deployment("chat-small", replicas=2))
    reconcile("chat-small")
    create(deployment("chat-small", replicas=1))
    reconcile("chat-small")
    create(deployment("chat-small", replicas=2))
    owner = reconcile("chat-small")
    assert gpus_of("chat-small") == {("gpu-a", 0), ("gpu-a", 1)}
    assert is_true(owner.status, "Scheduled")


# --- when nothing fits ------------------------------------------------------------


def test_it_says_what_is_missing_when_no_gpus_of_the_wanted_type_exist(add_node):
    add_node("gpu-a", gpus=2, gpu_type="H100")
    create(deployment("chat-small", replicas=1, resources={"gpusPerReplica": 1, "gpuTypes": ["A100-80GB"]}))
    owner = reconcile("chat-small")

    scheduled = condition(owner, "Scheduled")
    assert (scheduled["status"], scheduled["reason"]) == ("False", "Unschedulable")
    assert "needs 1×A100-80GB per replica" in scheduled["message"]
    assert "free: nothing" in scheduled["message"]
    assert condition(owner, "Progressing")["reason"] == "WaitingForCapacity"
    assert workloads_of("chat-small") == []
    warning = Event.objects.get(kind="Deployment", name="chat-small", reason="FailedScheduling")
    assert warning.type == "Warning"
    assert warning.message == scheduled["message"]


def test_it_schedules_once_capacity_appears(add_node):
    add_node("gpu-a", gpus=2, gpu_type="H100")
    create(deployment("chat-small", replicas=1, resources={"gpusPerReplica": 1, "gpuTypes": ["A100-80GB"]}))
    reconcile("chat-small")

    add_node("gpu-b", gpus=2, gpu_type="A100-80GB", memory_mib=81920)
    owner = reconcile("chat-small")
    assert condition(owner, "Scheduled")["status"] == "True"
    assert [(w.spec["nodeName"], w.spec["gpus"]) for w in workloads_of("chat-small")] == [("gpu-b", [0])]


def test_a_partial_placement_keeps_what_fits_and_names_what_is_free(add_node):
    add_node("n1", gpus=3)
    create(deployment("chat-small", replicas=2, resources={"gpusPerReplica": 2, "gpuTypes": ["H100"]}))
    owner = reconcile("chat-small")
    assert [w.spec["gpus"] for w in workloads_of("chat-small")] == [[0, 1]]
    message = condition(owner, "Scheduled")["message"]
    assert "1/2 scheduled; 1 replica unplaced" in message
    assert "2×H100" in message
    assert "free: 1×H100 on n1" in message
    assert owner.status["replicas"]["scheduled"] == 1


def test_reconciling_a_partly_placed_deployment_again_changes_nothing(add_node):
    add_node("n1", gpus=3)
    create(deployment("chat-small", replicas=2, resources={"gpusPerReplica": 2, "gpuTypes": ["H100"]}))
    first = reconcile("chat-small")
    second = reconcile("chat-small")
    assert condition(second, "Scheduled")["message"] == condition(first, "Scheduled")["message"]
    assert second.resource_version == first.resource_version
    assert reasons("Deployment", "chat-small").count("FailedScheduling") == 1


def test_a_repeated_unschedulable_pass_records_no_new_warning(add_node):
    create(deployment("chat-small", replicas=1))
    reconcile("chat-small")
    reconcile("chat-small")
    assert reasons("Deployment", "chat-small").count("FailedScheduling") == 1
    assert (
        "the fleet has no nodes" in condition(store.get("Deployment", "chat-small"), "Scheduled")["message"]
    )


def test_a_deployment_in_a_missing_cluster_says_so(add_node):
    add_node("gpu-a")
    create(deployment("chat-small", replicas=1, cluster="prod"))
    owner = reconcile("chat-small")
    scheduled = condition(owner, "Scheduled")
    assert scheduled["status"] == "False"
    assert (
        scheduled["message"] == "0/1 scheduled; cluster prod does not exist; apply it or remove spec.cluster"
    )


# --- node health --------------------------------------------------------------------


def test_a_registered_node_is_ready_and_has_a_lease(add_node):
    node = add_node("gpu-a", gpus=2)
    assert is_true(node.status, "Ready")
    assert [d["index"] for d in node.status["devices"]] == [0, 1]
    assert NodeLease.objects.filter(node_name="gpu-a").exists()
    assert nodes.last_heartbeat("gpu-a") is not None
    assert reasons("Node", "gpu-a") == ["Registered"]


def test_a_node_with_a_fresh_heartbeat_stays_ready(add_node):
    add_node("gpu-a")
    assert nodes.check_heartbeats() == 0
    assert is_true(store.get("Node", "gpu-a").status, "Ready")


def test_a_node_that_misses_heartbeats_goes_not_ready(add_node):
    add_node("gpu-a")
    add_node("gpu-b")
    age_lease("gpu-a")
    assert nodes.check_heartbeats() == 1

    ready = condition(store.get("Node", "gpu-a"), "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "NodeStatusUnknown")
    assert ready["message"] == "no heartbeat for over 40s"
    assert is_true(store.get("Node", "gpu-b").status, "Ready")
    assert "NodeNotReady" in reasons("Node", "gpu-a")
    assert nodes.check_heartbeats() == 0  # already marked


def test_the_node_timeout_comes_from_settings(add_node, settings):
    settings.FLOTILLA_NODE_TIMEOUT = 600
    add_node("gpu-a")
    age_lease("gpu-a", seconds=300)
    assert nodes.check_heartbeats() == 0
    settings.FLOTILLA_NODE_TIMEOUT = 120
    assert nodes.check_heartbeats() == 1
    assert condition(store.get("Node", "gpu-a"), "Ready")["message"] == "no heartbeat for over 120s"


def test_a_node_without_a_lease_goes_not_ready(add_node):
    add_node("gpu-a")
    NodeLease.objects.filter(node_name="gpu-a").delete()
    assert nodes.check_heartbeats() == 1
    assert not is_true(store.get("Node", "gpu-a").status, "Ready")


def test_a_heartbeat_brings_a_node_back(add_node):
    add_node("gpu-a")
    age_lease("gpu-a")
    nodes.check_heartbeats()
    nodes.heartbeat("gpu-a")
    assert is_true(store.get("Node", "gpu-a").status, "Ready")
    assert reasons("Node", "gpu-a")[-1] == "NodeReady"
    assert nodes.check_heartbeats() == 0


def test_workloads_on_a_node_that_goes_not_ready_move_to_a_ready_node(add_node):
    add_node("gpu-a", gpus=2)
    add_node("gpu-b", gpus=2)
    create(deployment("chat-small", replicas=2))
    reconcile("chat-small")
    assert gpus_of("chat-small") == {("gpu-a", 0), ("gpu-a", 1)}
    lost = {w.uid for w in workloads_of("chat-small")}

    age_lease("gpu-a")
    nodes.check_heartbeats()
    owner = reconcile("chat-small")

    assert gpus_of("chat-small") == {("gpu-b", 0), ("gpu-b", 1)}
    assert lost.isdisjoint({w.uid for w in workloads_of("chat-small")})
    assert is_true(owner.status, "Scheduled")
    rescheduling = Event.objects.filter(kind="Deployment", name="chat-small", reason="Rescheduling")
    assert sorted(e.message.split()[0] for e in rescheduling) == [
        "workload/chat-small-router-0",
        "workload/chat-small-serve-0",
        "workload/chat-small-serve-1",
    ]
    assert all(e.type == "Warning" and "lost its node gpu-a" in e.message for e in rescheduling)


def test_a_full_disruption_leaves_workloads_where_they_are(add_node):
    # No node is Ready: most likely the control plane could not hear anyone, so
    # moving every replica would only restart them all (Kubernetes does the same).
    add_node("gpu-a", gpus=1)
    create(deployment("chat-small", replicas=1))
    reconcile("chat-small")
    (before,) = workloads_of("chat-small")
    age_lease("gpu-a")
    nodes.check_heartbeats()
    reconcile("chat-small")
    (after,) = workloads_of("chat-small")
    assert after.uid == before.uid and after.spec["nodeName"] == "gpu-a"


def test_workloads_on_a_not_ready_node_wait_when_no_other_node_fits(add_node):
    add_node("gpu-a", gpus=1)
    add_node("cpu-b", gpus=1, gpu_type="L4")
    create(deployment("chat-small", replicas=1, resources={"gpuTypes": ["H100"]}))
    reconcile("chat-small")
    age_lease("gpu-a")
    nodes.check_heartbeats()
    owner = reconcile("chat-small")
    assert workloads_of("chat-small") == []
    scheduled = condition(owner, "Scheduled")
    assert scheduled["status"] == "False"
    assert "not ready: gpu-a" in scheduled["message"]


def test_workloads_on_a_deleted_node_are_rescheduled(add_node):
    add_node("gpu-a", gpus=1)
    add_node("gpu-b", gpus=1)
    create(deployment("chat-small", replicas=1))
    reconcile("chat-small")
    (workload,) = workloads_of("chat-small")
    store.request_delete(store.get("Node", workload.spec["nodeName"]))
    reconcile("chat-small")
    (moved,) = workloads_of("chat-small")
    assert moved.spec["nodeName"] != workload.spec["nodeName"]


# --- cordons ----------------------------------------------------------------------


def test_a_cordoned_node_gets_no_new_workloads(add_node):
    add_node("gpu-a", gpus=4)
    add_node("gpu-b", gpus=8)
    create(node_doc("gpu-a", unschedulable=True))
    assert store.get("Node", "gpu-a").spec["unschedulable"] is True

    create(deployment("chat-small", replicas=3))
    reconcile("chat-small")
    assert {w.spec["nodeName"] for w in workloads_of("chat-small")} == {"gpu-b"}


def test_a_deployment_that_only_fits_on_a_cordoned_node_says_so(add_node):
    add_node("gpu-a", gpus=4)
    create(node_doc("gpu-a", unschedulable=True), deployment("chat-small", replicas=1))
    owner = reconcile("chat-small")
    assert workloads_of("chat-small") == []
    assert "cordoned: gpu-a" in condition(owner, "Scheduled")["message"]


def test_cordoning_keeps_the_workloads_already_on_the_node(add_node):
    add_node("gpu-a", gpus=2)
    create(deployment("chat-small", replicas=2))
    reconcile("chat-small")
    before = {w.uid for w in workloads_of("chat-small")}
    create(node_doc("gpu-a", unschedulable=True))
    reconcile("chat-small")
    assert {w.uid for w in workloads_of("chat-small")} == before


def test_a_re_registration_keeps_the_operators_cordon(add_node):
    add_node("gpu-a")
    create(node_doc("gpu-a", unschedulable=True))
    add_node("gpu-a")
    assert store.get("Node", "gpu-a").spec["unschedulable"] is True


def test_a_node_selector_matches_node_labels(add_node):
    add_node("gpu-a", gpus=2)
    add_node("gpu-b", gpus=8, labels={"zone": "eu-1"})
    create(deployment("chat-small", replicas=1, resources={"nodeSelector": {"zone": "eu-1"}}))
    reconcile("chat-small")
    assert [w.spec["nodeName"] for w in workloads_of("chat-small")] == ["gpu-b"]


# --- deletion ---------------------------------------------------------------------


def test_a_deployment_carries_the_workload_finalizer(add_node):
    create(deployment("chat-small", replicas=1))
    assert store.get("Deployment", "chat-small").finalizers == [WORKLOAD_FINALIZER]


def test_deleting_a_deployment_removes_its_workloads_then_the_object(add_node):
    add_node("gpu-a")
    create(deployment("chat-small", replicas=2))
    reconcile("chat-small")
    assert len(owned_by("chat-small")) == 3  # two replicas and the router

    assert store.request_delete(store.get("Deployment", "chat-small")) is False
    marked = store.get("Deployment", "chat-small")
    assert marked.deletion_timestamp is not None
    assert len(owned_by("chat-small")) == 3  # nothing goes until the controller runs

    owners.reconcile("Deployment", "chat-small")
    assert owned_by("chat-small") == []
    assert store.find("Deployment", "chat-small") is None
    assert "Deleting" in reasons("Deployment", "chat-small")
    deleted = Change.objects.filter(kind="Deployment", name="chat-small", type="DELETED")
    assert deleted.count() == 1


def test_deleting_frees_the_gpus_for_others(add_node):
    add_node("gpu-a", gpus=2)
    create(deployment("first", replicas=2), deployment("second", replicas=2))
    reconcile("first")
    assert not is_true(reconcile("second").status, "Scheduled")
    store.request_delete(store.get("Deployment", "first"))
    owners.reconcile("Deployment", "first")
    assert is_true(reconcile("second").status, "Scheduled")
    assert gpus_of("second") == {("gpu-a", 0), ("gpu-a", 1)}


def test_a_workload_finalizer_holds_its_owner_until_the_workload_is_gone(add_node):
    add_node("gpu-a")
    create(deployment("chat-small", replicas=1))
    reconcile("chat-small")
    (workload,) = workloads_of("chat-small")
    store.set_finalizers(workload, ["flotilla.dev/agent-stop"])
    store.request_delete(store.get("Deployment", "chat-small"))

    owners.reconcile("Deployment", "chat-small")
    assert store.get("Deployment", "chat-small").finalizers == [WORKLOAD_FINALIZER]
    assert store.get("Workload", workload.name).deletion_timestamp is not None

    store.set_finalizers(store.get("Workload", workload.name), [])
    owners.reconcile("Deployment", "chat-small")
    assert store.find("Deployment", "chat-small") is None


def test_reconciling_an_object_that_is_gone_does_nothing():
    changes = Change.objects.count()
    owners.reconcile("Deployment", "never-existed")
    clusters.reconcile("never-existed")
    assert Change.objects.count() == changes


# --- training jobs ----------------------------------------------------------------


def test_a_training_job_gets_one_workload_with_role_train(add_node):
    add_node("gpu-a", gpus=4)
    create(training_job("pretrain", resources={"gpusPerReplica": 2}))
    owner = reconcile("pretrain", "TrainingJob")
    (workload,) = workloads_of("pretrain")
    assert workload.name == "pretrain-train-0"
    assert (workload.spec["role"], workload.spec["runtime"]) == ("train", "train")
    assert workload.spec["gpus"] == [0, 1]
    assert workload.spec["owner"]["kind"] == "TrainingJob"
    assert is_true(owner.status, "Scheduled")
    assert condition(owner, "Ready")["message"] == "0/1 replicas running"


# --- sharing GPUs -----------------------------------------------------------------


def test_two_deployments_reconciled_one_after_another_never_share_a_gpu(add_node):
    add_node("gpu-a", gpus=4)
    add_node("gpu-b", gpus=2)
    create(deployment("first", replicas=3), deployment("second", replicas=3))
    reconcile("first")
    reconcile("second")
    first, second = gpus_of("first"), gpus_of("second")
    assert len(first) == 3
    assert len(second) == 3
    assert first.isdisjoint(second)


def test_a_deployment_and_a_training_job_never_share_a_gpu(add_node):
    add_node("gpu-a", gpus=3)
    create(deployment("chat-small", replicas=2), training_job("pretrain", resources={"gpusPerReplica": 2}))
    reconcile("chat-small")
    job = reconcile("pretrain", "TrainingJob")
    assert workloads_of("pretrain") == []
    assert "free: 1×H100 on gpu-a" in condition(job, "Scheduled")["message"]


# --- clusters ---------------------------------------------------------------------


def cluster_doc(name: str, prices: dict[str, float]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "Cluster",
        "metadata": {"name": name},
        "spec": {"gpuPrices": prices},
    }


def test_the_cluster_controller_counts_capacity_per_gpu_type_and_cost(add_node):
    create(cluster_doc("prod", {"H100": 4.5, "A100-80GB": 3.67}))
    add_node("n1", gpus=4, cluster="prod")
    add_node("n2", gpus=2, gpu_type="A100-80GB", memory_mib=81920, cluster="prod")
    add_node("elsewhere", gpus=8)
    create(
        deployment("chat-small", replicas=3, cluster="prod", resources={"gpuTypes": ["H100"]}),
        deployment("big", replicas=1, cluster="prod", resources={"gpuTypes": ["A100-80GB"]}),
    )
    reconcile("chat-small")
    reconcile("big")

    clusters.reconcile("prod")
    cluster = store.get("Cluster", "prod")
    capacity = cluster.status["capacity"]
    assert capacity["nodes"] == {"total": 2, "ready": 2}
    assert capacity["gpus"] == {
        "A100-80GB": {"total": 2, "allocated": 1, "free": 1, "unhealthy": 0},
        "H100": {"total": 4, "allocated": 3, "free": 1, "unhealthy": 0},
    }
    assert capacity["costPerHour"] == pytest.approx(3 * 4.5 + 3.67)
    assert capacity["unpricedTypes"] == []
    assert cluster.status["observedGeneration"] == cluster.generation
    ready = condition(cluster, "Ready")
    assert (ready["status"], ready["reason"], ready["message"]) == ("True", "NodesReady", "2/2 nodes ready")


def test_the_cluster_controller_names_unpriced_types_and_unusable_gpus(add_node):
    create(cluster_doc("prod", {"H100": 4.5}))
    add_node("n1", gpus=2, gpu_type="L4", memory_mib=23034, cluster="prod")
    add_node("n2", gpus=2, cluster="prod")
    age_lease("n2")
    nodes.check_heartbeats()

    clusters.reconcile("prod")
    cluster = store.get("Cluster", "prod")
    capacity = cluster.status["capacity"]
    assert capacity["unpricedTypes"] == ["L4"]
    assert capacity["gpus"]["H100"] == {"total": 2, "allocated": 0, "free": 0, "unhealthy": 2}
    assert capacity["gpus"]["L4"]["free"] == 2
    assert capacity["nodes"] == {"total": 2, "ready": 1}
    assert capacity["costPerHour"] == 0


def test_a_cluster_without_nodes_is_not_ready():
    create(cluster_doc("empty", {}))
    clusters.reconcile("empty")
    cluster = store.get("Cluster", "empty")
    assert cluster.status["capacity"]["nodes"] == {"total": 0, "ready": 0}
    assert condition(cluster, "Ready")["reason"] == "NoReadyNodes"


def test_reconciling_a_cluster_twice_changes_nothing(add_node):
    create(cluster_doc("prod", {"H100": 4.5}))
    add_node("n1", cluster="prod")
    clusters.reconcile("prod")
    version = store.get("Cluster", "prod").resource_version
    clusters.reconcile("prod")
    assert store.get("Cluster", "prod").resource_version == version


# --- conditions -------------------------------------------------------------------

LONG_AGO = "2020-01-01T00:00:00Z"


def test_set_condition_adds_a_condition_with_a_transition_time():
    status: dict[str, Any] = {}
    before = rfc3339(now())
    assert set_condition(status, "Ready", False, "Starting", "0/1") is True
    (ready,) = status["conditions"]
    assert ready["type"] == "Ready"
    assert (ready["status"], ready["reason"], ready["message"]) == ("False", "Starting", "0/1")
    assert before <= ready["lastTransitionTime"] <= rfc3339(now())


def test_set_condition_keeps_the_transition_time_when_the_status_stays():
    status = {
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": "Starting",
                "message": "0/2",
                "lastTransitionTime": LONG_AGO,
            }
        ]
    }
    assert set_condition(status, "Ready", False, "Starting", "1/2") is True
    assert status["conditions"][0]["message"] == "1/2"
    assert status["conditions"][0]["lastTransitionTime"] == LONG_AGO


def ready_since_long_ago() -> dict:
    condition = {"type": "Ready", "status": "True", "reason": "Ok", "message": "fine"}
    return {"conditions": [{**condition, "lastTransitionTime": LONG_AGO}]}


def test_set_condition_reports_no_change_when_nothing_changed():
    status = ready_since_long_ago()
    assert set_condition(status, "Ready", True, "Ok", "fine") is False
    assert status["conditions"][0]["lastTransitionTime"] == LONG_AGO


def test_set_condition_moves_the_transition_time_when_the_status_flips():
    status = ready_since_long_ago()
    before = now().replace(microsecond=0)
    assert set_condition(status, "Ready", False, "NodeStatusUnknown", "silent") is True
    (ready,) = status["conditions"]
    assert ready["status"] == "False"
    assert ready["lastTransitionTime"] != LONG_AGO
    assert ready["lastTransitionTime"] >= rfc3339(before)


def test_set_condition_leaves_other_conditions_alone():
    status: dict[str, Any] = {}
    set_condition(status, "Scheduled", True, "Placed")
    set_condition(status, "Ready", False, "Starting")
    set_condition(status, "Scheduled", False, "Unschedulable")
    assert [(c["type"], c["status"]) for c in status["conditions"]] == [
        ("Scheduled", "False"),
        ("Ready", "False"),
    ]
    assert is_true(status, "Scheduled") is False
    assert is_true(status, "Missing") is False


# --- leases -----------------------------------------------------------------------


def test_a_second_acquire_fails_while_the_lease_is_held():
    holder = leases.acquire("lock:Deployment/chat", 30)
    assert holder is not None
    assert leases.acquire("lock:Deployment/chat", 30) is None
    assert leases.acquire("lock:Deployment/other", 30) is not None


def test_a_lease_can_be_taken_again_after_it_expires():
    first = leases.acquire("lock:Deployment/chat", 30)
    Lease.objects.filter(key="lock:Deployment/chat").update(expires_at=now() - timedelta(seconds=1))
    second = leases.acquire("lock:Deployment/chat", 30)
    assert second is not None
    assert second != first
    assert Lease.objects.get(key="lock:Deployment/chat").holder == second


def test_a_lease_can_be_taken_again_after_it_is_released():
    holder = leases.acquire("lock:Deployment/chat", 30)
    leases.release("lock:Deployment/chat", holder)
    assert leases.acquire("lock:Deployment/chat", 30) is not None


def test_releasing_with_another_holders_token_does_nothing():
    holder = leases.acquire("lock:Deployment/chat", 30)
    leases.release("lock:Deployment/chat", "not-the-holder")
    assert Lease.objects.get(key="lock:Deployment/chat").holder == holder
    assert leases.acquire("lock:Deployment/chat", 30) is None


def test_held_yields_whether_the_lease_was_taken_and_releases_it():
    with leases.held("lock:Deployment/chat", 30) as mine:
        assert mine is True
        with leases.held("lock:Deployment/chat", 30) as theirs:
            assert theirs is False
        assert Lease.objects.filter(key="lock:Deployment/chat").exists()
    assert not Lease.objects.filter(key="lock:Deployment/chat").exists()


def test_a_recreated_object_starts_its_own_event_counts(add_node):
    from controlplane import events

    add_node("gpu-a", gpus=1)
    apply([deployment("again", replicas=1)], actor="test")
    first = store.get("Deployment", "again")
    events.record(first, "Custom", "same message")
    events.record(first, "Custom", "same message")
    store.set_finalizers(first, [])
    store.request_delete(store.get("Deployment", "again"))
    apply([deployment("again", replicas=1)], actor="test")
    events.record(store.get("Deployment", "again"), "Custom", "same message")
    counts = sorted(Event.objects.filter(name="again", reason="Custom").values_list("count", flat=True))
    assert counts == [1, 2]


def test_spec_runtime_settings_reach_the_workload_config(add_node):
    add_node("gpu-a", gpus=2)
    doc = deployment("tuned", replicas=1)
    doc["spec"]["runtime"] = {"maxBatch": 8, "kvCacheBlocks": 128}
    create(doc)
    reconcile("tuned")
    (workload,) = workloads_of("tuned")
    config = workload.spec["config"]
    assert config["maxBatch"] == 8 and config["kvCacheBlocks"] == 128
    assert "drainSeconds" not in config, "unset settings leave the runtime's default"


def test_bad_runtime_settings_are_refused_at_apply():
    from controlplane.errors import Invalid

    doc = deployment("tuned", replicas=1)
    doc["spec"]["runtime"] = {"maxBatch": 0, "threads": 4}
    with pytest.raises(Invalid) as caught:
        create(doc)
    fields = {d["field"] for d in caught.value.details}
    assert {"spec.runtime.maxBatch", "spec.runtime.threads"} <= fields
