"""The Kubernetes executor: Workloads of `executor: kubernetes` Clusters as Pods.

No kube-apiserver (nor kubelet, nor scheduler) can run here, so the official ``kubernetes``
client talks to ``tests.kube_double``: a double of the Kubernetes API at the wire level
(namespaced Pods listed with a label selector and a resourceVersion, chunked watch
streams, 409 AlreadyExists, 410 Gone on an expired watch), on a local port. The tests play
the kubelet's part with ``set_pod_state``.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from agents.supervisor import Supervisor
from common.envhelpers import ConfigError
from controlplane import store
from controlplane.apply import apply
from controlplane.conditions import get_condition
from controlplane.controllers import owners
from controlplane.kube import pods
from controlplane.models import Event, Resource
from tests.conftest import deployment
from tests.kube_double import KubeApiDouble, container_status

pytestmark = pytest.mark.django_db

NS = "flotilla-test"
API_VERSION = "flotilla.dev/v1"


@pytest.fixture
def double():
    api = KubeApiDouble().start()
    yield api
    api.stop()


@pytest.fixture
def executor(settings):
    settings.FLOTILLA_KUBERNETES_EXECUTOR = True
    settings.FLOTILLA_KUBERNETES_NAMESPACE = NS
    settings.FLOTILLA_KUBERNETES_IMAGE = "registry.example/flotilla:1.0-cuda"
    return settings


@pytest.fixture
def fleet(add_node):
    apply(
        [
            cluster_doc("k8s", "kubernetes"),
            cluster_doc("metal", "agent"),
        ],
        actor="test",
    )
    add_node("gpu-a", gpus=8, cluster="k8s")
    add_node("gpu-b", gpus=8, cluster="metal")


def cluster_doc(name: str, executor: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "Cluster",
        "metadata": {"name": name},
        "spec": {"executor": executor},
    }


def training_job(name: str, cluster: str) -> dict[str, Any]:
    spec = {
        "model": {"source": "builtin:tiny-llama"},
        "data": {"source": "builtin:tiny-shakespeare"},
        "steps": 10,
        "batchSize": 2,
        "resources": {"gpusPerReplica": 2},
        "cluster": cluster,
    }
    return {"apiVersion": API_VERSION, "kind": "TrainingJob", "metadata": {"name": name}, "spec": spec}


def core(double: KubeApiDouble) -> client.CoreV1Api:
    return client.CoreV1Api(client.ApiClient(client.Configuration(host=double.url)))


def place(document: dict[str, Any]) -> list[Resource]:
    apply([document], actor="test")
    owners.reconcile(document["kind"], document["metadata"]["name"])
    name = document["metadata"]["name"]
    return sorted(
        (w for w in Resource.objects.filter(kind="Workload") if w.spec["owner"]["name"] == name),
        key=lambda w: w.name,
    )


def workload(name: str) -> Resource:
    return store.get("Workload", name)


def ready(name: str) -> dict[str, Any]:
    found = get_condition(workload(name).status, "Ready")
    assert found is not None
    return found


def the_pod(double: KubeApiDouble, name: str) -> dict[str, Any]:
    return double.pods[NS, f"flotilla-{name}"]


def running(ready_: bool = True) -> dict[str, Any]:
    return container_status(state={"running": {"startedAt": "2026-01-01T00:00:00Z"}}, ready=ready_)


def test_a_workload_on_a_kubernetes_cluster_becomes_a_pinned_pod_with_its_gpus(double, executor, fleet):
    (serve,) = place(deployment("chat", replicas=1, cluster="k8s", resources={"gpusPerReplica": 2}))
    assert serve.spec["executor"] == "kubernetes"

    _, counts = pods.sync(core(double))

    assert counts == {"created": 1}
    pod = the_pod(double, serve.name)
    labels = pod["metadata"]["labels"]
    assert labels["flotilla.dev/workload"] == serve.name
    assert labels["flotilla.dev/workload-uid"] == str(serve.uid)
    spec = pod["spec"]
    assert spec["nodeName"] == "gpu-a"
    assert spec["restartPolicy"] == "Always"
    assert spec["automountServiceAccountToken"] is False
    (container,) = spec["containers"]
    assert container["image"] == "registry.example/flotilla:1.0-cuda"
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert container["args"] == [
        "python",
        "-m",
        "agents.runtimes.serve",
        "--config",
        "/etc/flotilla/workload/config.json",
        "--device",
        "auto",
        "--host",
        "0.0.0.0",  # noqa: S104 - the Pod's own address
        "--port",
        "8000",
    ]
    assert container["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # The runtime's config travels in an annotation, mounted as the --config file.
    import json

    assert json.loads(pod["metadata"]["annotations"]["flotilla.dev/config"]) == serve.spec["config"]
    assert "flotilla.dev/config" in json.dumps(spec["volumes"])
    # The Workload is held until its Pod is gone.
    assert pods.FINALIZER in workload(serve.name).finalizers


def test_the_pod_goes_to_the_kubernetes_node_discovery_linked(double, executor, fleet):
    node = store.get("Node", "gpu-a")
    store.update_status(node, {**node.status, "kubernetes": {"name": "ip-10-0-0-7", "uid": "u1"}})
    (serve,) = place(deployment("chat", replicas=1, cluster="k8s"))

    pods.sync(core(double))

    assert the_pod(double, serve.name)["spec"]["nodeName"] == "ip-10-0-0-7"


def test_agent_executor_clusters_get_no_pod(double, executor, fleet):
    (serve,) = place(deployment("chat", replicas=1, cluster="metal"))

    _, counts = pods.sync(core(double))

    assert "executor" not in serve.spec
    assert counts == {}
    assert double.pods == {}
    assert pods.FINALIZER not in workload(serve.name).finalizers


def test_pod_phases_map_to_workload_phase_and_conditions(double, executor, fleet):
    (serve,) = place(deployment("chat", replicas=1, cluster="k8s"))
    api = core(double)
    pods.sync(api)
    name = f"flotilla-{serve.name}"

    pull = container_status(state={"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling"}})
    double.set_pod_state(NS, name, "Pending", containers=[pull])
    pods.sync(api)
    assert workload(serve.name).status["phase"] == "Pending"
    assert ready(serve.name)["reason"] == "ImagePullBackOff"

    double.set_pod_state(NS, name, "Running", containers=[running(False)], pod_ip="10.244.1.9")
    pods.sync(api)
    assert workload(serve.name).status["phase"] == "Starting"
    assert ready(serve.name)["status"] == "False"

    double.set_pod_state(NS, name, "Running", containers=[running(True)], pod_ip="10.244.1.9")
    pods.sync(api)
    status = workload(serve.name).status
    assert status["phase"] == "Running"
    assert ready(serve.name)["status"] == "True" and ready(serve.name)["reason"] == "Serving"
    assert status["endpoint"] == "http://10.244.1.9:8000"
    assert status["pod"]["ip"] == "10.244.1.9" and status["pod"]["node"] == "gpu-a"

    oom = container_status(state={"terminated": {"reason": "OOMKilled", "exitCode": 137}}, restarts=1)
    double.set_pod_state(NS, name, "Running", containers=[oom], pod_ip="10.244.1.9")
    pods.sync(api)
    status = workload(serve.name).status
    assert status["phase"] == "Failed"
    assert ready(serve.name)["reason"] == "OOMKilled"
    assert status["lastExitCode"] == 137 and status["restarts"] == 1
    assert "endpoint" not in status
    assert Event.objects.filter(name=serve.name, reason="OOMKilled", type="Warning").exists()

    crash = container_status(
        state={"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s restarting"}},
        last_state={"terminated": {"reason": "OOMKilled", "exitCode": 137}},
        restarts=2,
    )
    double.set_pod_state(NS, name, "Running", containers=[crash])
    pods.sync(api)
    assert workload(serve.name).status["phase"] == "Failed"
    assert ready(serve.name)["reason"] == "CrashLoopBackOff"
    assert "OOMKilled" in ready(serve.name)["message"]


def test_a_pending_pod_reports_why_it_is_not_scheduled(double, executor, fleet):
    (serve,) = place(deployment("chat", replicas=1, cluster="k8s"))
    api = core(double)
    pods.sync(api)
    unscheduled = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/3 nodes are available: 1 Insufficient nvidia.com/gpu.",
    }
    double.set_pod_state(NS, f"flotilla-{serve.name}", "Pending", conditions=[unscheduled])

    pods.sync(api)

    assert ready(serve.name)["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in ready(serve.name)["message"]


def test_a_training_pod_runs_to_succeeded(double, executor, fleet):
    (train,) = place(training_job("pretrain", "k8s"))
    api = core(double)
    pods.sync(api)
    pod = the_pod(double, train.name)
    assert pod["spec"]["restartPolicy"] == "OnFailure"
    assert pod["spec"]["containers"][0]["args"][:3] == ["python", "-m", "agents.runtimes.train"]
    assert "--port" not in pod["spec"]["containers"][0]["args"]
    assert pod["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "2"}

    done = container_status(state={"terminated": {"reason": "Completed", "exitCode": 0}})
    double.set_pod_state(NS, pod["metadata"]["name"], "Succeeded", containers=[done])
    pods.sync(api)

    assert workload(train.name).status["phase"] == "Succeeded"
    assert ready(train.name)["reason"] == "Completed"


def test_a_deleted_workloads_pod_is_deleted_and_its_finalizer_then_lifted(double, executor, fleet):
    double.graceful_pods = True  # the kubelet must stop the containers first
    (serve,) = place(deployment("chat", replicas=1, cluster="k8s"))
    api = core(double)
    pods.sync(api)
    pod_name = f"flotilla-{serve.name}"

    store.request_delete(workload(serve.name))
    _, counts = pods.sync(api)
    assert counts == {"deleting": 1}
    assert double.pods[NS, pod_name]["metadata"]["deletionTimestamp"]
    assert workload(serve.name).deletion_timestamp is not None  # held while the Pod stops

    _, counts = pods.sync(api)
    assert counts == {"waiting": 1}

    double.finish_pod_deletion(NS, pod_name)
    _, counts = pods.sync(api)
    assert counts == {"released": 1}
    assert not Resource.objects.filter(kind="Workload", name=serve.name).exists()


def test_the_watch_lifts_the_finalizer_when_the_pod_is_gone(double, executor, fleet):
    (serve,) = place(deployment("chat", replicas=1, cluster="k8s"))
    api = core(double)
    version, _ = pods.sync(api)
    store.request_delete(workload(serve.name))
    double.delete_pod(NS, f"flotilla-{serve.name}")  # someone, or the last sync, deleted it

    _, counts = pods.watch_once(api, version, timeout_seconds=1)

    # The list was taken before the Pod was created: its ADDED comes first, and changes nothing.
    assert counts == {"ignored": 1, "released": 1}
    assert not Resource.objects.filter(kind="Workload", name=serve.name).exists()


def test_the_watch_writes_status_as_the_kubelet_reports(double, executor, fleet):
    (serve,) = place(deployment("chat", replicas=1, cluster="k8s"))
    api = core(double)
    version, _ = pods.sync(api)
    double.set_pod_state(NS, f"flotilla-{serve.name}", "Running", containers=[running()], pod_ip="10.0.0.5")

    _, counts = pods.watch_once(api, version, timeout_seconds=1)

    assert counts == {"updated": 2}  # ADDED (Pending), then the kubelet's MODIFIED (Running)
    assert workload(serve.name).status["phase"] == "Running"


def test_an_expired_watch_raises_expired(double, executor, fleet):
    place(deployment("chat", replicas=1, cluster="k8s"))
    api = core(double)
    version, _ = pods.sync(api)
    double.add_pod({"metadata": {"name": "unrelated", "namespace": NS}})
    double.compact()

    with pytest.raises(pods.Expired):
        pods.watch_once(api, version, timeout_seconds=1)


def test_an_orphan_pod_is_deleted(double, executor, fleet):
    labels = {
        "app.kubernetes.io/managed-by": "flotilla",
        "flotilla.dev/workload": "gone",
        "flotilla.dev/workload-uid": "00000000-0000-0000-0000-000000000000",
    }
    double.add_pod({"metadata": {"name": "flotilla-gone", "namespace": NS, "labels": labels}})
    double.add_pod({"metadata": {"name": "someone-elses", "namespace": NS, "labels": {"app": "x"}}})

    _, counts = pods.sync(core(double))

    assert counts == {"orphaned": 1}
    assert list(double.pods) == [(NS, "someone-elses")]


def test_unchanged_state_causes_no_writes(double, executor, fleet):
    (serve,) = place(deployment("chat", replicas=1, cluster="k8s"))
    api = core(double)
    pods.sync(api)
    double.set_pod_state(NS, f"flotilla-{serve.name}", "Running", containers=[running()], pod_ip="10.0.0.5")
    pods.sync(api)
    before = workload(serve.name).resource_version
    requests = len(double.requests)

    _, counts = pods.sync(api)

    assert counts == {"unchanged": 1}
    assert workload(serve.name).resource_version == before
    assert [method for method, _ in double.requests[requests:]] == ["GET"]  # the list, nothing else


def test_a_new_generation_replaces_the_pod(double, executor, fleet):
    (serve,) = place(deployment("chat", replicas=1, cluster="k8s"))
    api = core(double)
    pods.sync(api)
    current = workload(serve.name)
    store.update(current, spec={**current.spec, "config": {**current.spec["config"], "maxBatch": 4}})

    _, counts = pods.sync(api)
    assert counts == {"replaced": 1}
    _, counts = pods.sync(api)

    assert counts == {"created": 1}
    assert the_pod(double, serve.name)["metadata"]["annotations"]["flotilla.dev/generation"] == "2"


def test_without_an_image_it_says_which_setting_to_set(double, executor, fleet):
    executor.FLOTILLA_KUBERNETES_IMAGE = None
    (serve,) = place(deployment("chat", replicas=1, cluster="k8s"))

    with pytest.raises(ConfigError, match="FLOTILLA_KUBERNETES_IMAGE"):
        pods.sync(core(double))

    assert double.pods == {}
    assert ready(serve.name)["reason"] == "ImageNotConfigured"
    assert "FLOTILLA_KUBERNETES_IMAGE" in ready(serve.name)["message"]


def test_the_command_refuses_while_the_executor_is_off(settings):
    from django.core.management import CommandError, call_command

    settings.FLOTILLA_KUBERNETES_EXECUTOR = False
    with pytest.raises(CommandError, match="FLOTILLA_KUBERNETES_EXECUTOR=true"):
        call_command("kube_pods", "--once")


def test_the_agent_starts_nothing_for_kubernetes_workloads(tmp_path):
    supervisor = Supervisor(tmp_path, simulate_workloads=True)

    def document(name: str, **spec: Any) -> dict[str, Any]:
        return {
            "metadata": {"name": name, "generation": 1},
            "spec": {"runtime": "serve", "gpus": [0], **spec},
        }

    supervisor.sync(
        {
            "by-agent": document("by-agent"),
            "by-default": document("by-default", executor="agent"),
            "as-pod": document("as-pod", executor="kubernetes"),
        }
    )
    supervisor.tick()

    assert set(supervisor.workloads) == {"by-agent", "by-default"}
