"""Kubernetes node discovery, through the official ``kubernetes`` client.

No kube-apiserver can run here, so the client talks to ``tests.kube_double``: a double
of the Kubernetes API at the wire level (list with resourceVersion, chunked watch
streams, 410 Gone on an expired watch, 409 on a stale update), on a local port.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controlplane import store
from controlplane.conditions import get_condition, is_true
from controlplane.controllers import nodes as lifecycle
from controlplane.kube import client as kube_client
from controlplane.kube import nodes
from controlplane.models import Event, Resource
from tests.kube_double import KubeApiDouble, gpu_node, ready_condition

pytestmark = pytest.mark.django_db


@pytest.fixture
def double():
    api = KubeApiDouble().start()
    yield api
    api.stop()


def core(double: KubeApiDouble) -> client.CoreV1Api:
    configuration = client.Configuration(host=double.url)
    return client.CoreV1Api(client.ApiClient(configuration))


def flotilla_node(name: str) -> Resource:
    return store.get("Node", name)


def condition(name: str, type_: str) -> dict[str, Any]:
    found = get_condition(flotilla_node(name).status, type_)
    assert found is not None
    return found


def test_the_initial_list_mirrors_gpu_capacity_product_and_memory(double):
    double.add(gpu_node("gpu-a", gpus=8, product="NVIDIA-H100-80GB-HBM3", memory_mib=81559))
    double.add(gpu_node("gpu-b", gpus=4, product="NVIDIA-A100-SXM4-40GB", memory_mib=40960))
    double.add(gpu_node("system", gpus=0, product=None, memory_mib=None))

    version, counts = nodes.relist(core(double))

    assert version == str(double.version)
    assert counts == {"created": 2, "skipped": 1}
    node = flotilla_node("gpu-a")
    devices = node.status["devices"]
    assert [d["index"] for d in devices] == list(range(8))
    assert {(d["type"], d["memoryMiB"], d["healthy"]) for d in devices} == {("H100", 81559, True)}
    assert flotilla_node("gpu-b").status["devices"][0]["type"] == "A100-40GB"
    assert node.labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert node.labels["nvidia.com/gpu.memory"] == "81559"
    assert node.labels["kubernetes.io/hostname"] == "gpu-a"
    assert "kubernetes.io/os" not in node.labels
    link = node.status["kubernetes"]
    assert link["name"] == "gpu-a" and link["uid"] == double.nodes["gpu-a"]["metadata"]["uid"]
    assert link["gpus"] == {"count": 8, "product": "NVIDIA-H100-80GB-HBM3", "memoryMiB": 81559}
    # No agent runs there yet: nothing may be placed on it.
    assert condition("gpu-a", "Ready")["reason"] == "NoAgent"
    assert is_true(node.status, "KubernetesReady")
    assert not Resource.objects.filter(kind="Node", name="system").exists()


def test_a_modified_event_marks_a_node_not_ready_and_cordoned(double):
    double.add(gpu_node("gpu-a"))
    api = core(double)
    version, _ = nodes.relist(api)

    def sick(obj):
        obj["status"]["conditions"] = [ready_condition(False)]
        obj["spec"]["unschedulable"] = True

    double.modify("gpu-a", sick)
    version, counts = nodes.watch_once(api, version, timeout_seconds=1)

    assert counts == {"updated": 1}
    assert version == str(double.version)
    node = flotilla_node("gpu-a")
    assert node.spec["unschedulable"] is True
    assert condition("gpu-a", "KubernetesReady")["reason"] == "KubeletNotReady"
    reasons = set(Event.objects.filter(name="gpu-a").values_list("reason", flat=True))
    assert {"KubernetesNotReady", "Cordoned"} <= reasons

    double.modify("gpu-a", lambda obj: obj["spec"].pop("unschedulable"))
    nodes.watch_once(api, version, timeout_seconds=1)
    assert flotilla_node("gpu-a").spec["unschedulable"] is False


def test_a_cordon_made_in_flotilla_survives_kubernetes_updates(double):
    double.add(gpu_node("gpu-a"))
    api = core(double)
    version, _ = nodes.relist(api)
    node = flotilla_node("gpu-a")
    store.update(node, spec={**node.spec, "unschedulable": True})

    double.modify("gpu-a", lambda obj: obj["metadata"]["labels"].update({"nvidia.com/gpu.count": "7"}))
    nodes.watch_once(api, version, timeout_seconds=1)

    assert flotilla_node("gpu-a").spec["unschedulable"] is True


def test_410_gone_triggers_a_relist_and_nothing_is_lost(double):
    double.add(gpu_node("gpu-a"))
    double.add(gpu_node("gpu-b"))
    api = core(double)
    version, _ = nodes.relist(api)
    # Changes the watch will never see: the history is compacted past them.
    double.add(gpu_node("gpu-c", gpus=2))
    double.modify("gpu-a", lambda obj: obj["spec"].update({"unschedulable": True}))
    double.delete("gpu-b")
    double.compact()

    with pytest.raises(nodes.Expired):
        nodes.watch_once(api, version, timeout_seconds=1)
    _, counts = nodes.relist(api)  # what run() does after a 410 (test_run_relists_after_410...)
    assert counts == {"created": 1, "updated": 1, "deleted": 1}
    assert flotilla_node("gpu-a").spec["unschedulable"] is True
    assert len(flotilla_node("gpu-c").status["devices"]) == 2
    assert not Resource.objects.filter(kind="Node", name="gpu-b").exists()


def test_the_double_also_answers_an_expired_watch_with_http_410(double):
    double.expired_as = "http"
    double.add(gpu_node("gpu-a"))
    api = core(double)
    version, _ = nodes.relist(api)
    double.modify("gpu-a", lambda obj: None)
    double.compact()

    with pytest.raises(nodes.Expired):
        nodes.watch_once(api, version, timeout_seconds=1)


def test_run_relists_after_410_and_keeps_watching(double, monkeypatch):
    """The loop itself, with the mirror recorded instead of written (its own thread has
    its own database connection, which cannot see this test's transaction)."""
    seen: list[tuple[str, str]] = []
    monkeypatch.setattr(
        nodes.mirror,
        "mirror",
        lambda obj, cluster=None: seen.append(("mirror", obj["metadata"]["name"])) or "updated",
    )
    monkeypatch.setattr(
        nodes.mirror, "forget", lambda obj: seen.append(("forget", obj["metadata"]["name"])) or "marked"
    )
    monkeypatch.setattr(nodes.mirror, "linked_uids", lambda: {})
    double.add(gpu_node("gpu-a"))
    api = core(double)
    real_watch = nodes.watch_once
    calls = []

    def expire_first(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 1:
            double.add(gpu_node("gpu-b"))
            double.compact()
        if len(calls) == 3:
            stop.set()
        return real_watch(*args, **kwargs)

    monkeypatch.setattr(nodes, "watch_once", expire_first)
    stop = threading.Event()
    nodes.run(api, stop, timeout_seconds=1)

    assert seen == [("mirror", "gpu-a"), ("mirror", "gpu-a"), ("mirror", "gpu-b")]
    assert len(calls) == 3


def test_a_deleted_node_an_agent_registered_is_marked_not_removed(double):
    lifecycle.register("gpu-a", cluster=None, labels={}, devices=[], info={"hostname": "gpu-a"})
    double.add(gpu_node("gpu-a"))
    api = core(double)
    version, _ = nodes.relist(api)

    double.delete("gpu-a")
    _, counts = nodes.watch_once(api, version, timeout_seconds=1)

    assert counts == {"marked": 1}
    node = flotilla_node("gpu-a")
    assert node.status["kubernetes"]["deleted"] is True
    assert condition("gpu-a", "KubernetesReady")["reason"] == "DeletedFromKubernetes"
    assert is_true(node.status, "Ready")  # the agent still heartbeats
    assert Event.objects.filter(name="gpu-a", reason="KubernetesNodeDeleted").exists()


def test_a_deleted_node_only_discovery_made_is_removed(double):
    double.add(gpu_node("gpu-a"))
    api = core(double)
    version, _ = nodes.relist(api)

    double.delete("gpu-a")
    _, counts = nodes.watch_once(api, version, timeout_seconds=1)

    assert counts == {"deleted": 1}
    assert not Resource.objects.filter(kind="Node", name="gpu-a").exists()


def test_unchanged_objects_cause_no_store_writes(double):
    double.add(gpu_node("gpu-a"))
    api = core(double)
    version, _ = nodes.relist(api)
    before = flotilla_node("gpu-a").resource_version

    # The kubelet's status heartbeat: a new Kubernetes version, nothing Flotilla mirrors.
    double.modify(
        "gpu-a", lambda obj: obj["status"]["conditions"][0].update(lastHeartbeatTime="2026-02-02T00:00:00Z")
    )
    _, counts = nodes.watch_once(api, version, timeout_seconds=1)
    _, again = nodes.relist(api)

    assert counts == {"unchanged": 1}
    assert again == {"unchanged": 1}
    assert flotilla_node("gpu-a").resource_version == before


def test_it_links_to_the_agent_registered_on_the_same_host(double):
    agent_devices = [{"index": 0, "type": "H100", "name": "NVIDIA H100", "memoryMiB": 81559, "healthy": True}]
    lifecycle.register(
        "trainer-7",
        cluster="local",
        labels={},
        devices=agent_devices,
        info={"hostname": "gpu-a.example.internal"},
    )
    double.add(gpu_node("gpu-a", gpus=8))

    _, counts = nodes.relist(core(double))

    assert counts == {"updated": 1}
    assert not Resource.objects.filter(kind="Node", name="gpu-a").exists()
    node = flotilla_node("trainer-7")
    assert node.status["kubernetes"]["name"] == "gpu-a"
    assert node.status["devices"] == agent_devices  # the agent's NVML view wins
    assert node.status["kubernetes"]["gpus"]["count"] == 8
    assert is_true(node.status, "Ready")
    assert Event.objects.filter(name="trainer-7", reason="KubernetesLinked").exists()


def test_the_double_answers_a_stale_update_with_409(double):
    double.add(gpu_node("gpu-a"))
    api = core(double)
    stale = api.read_node("gpu-a")
    api.patch_node("gpu-a", {"spec": {"unschedulable": True}})

    stale.spec.unschedulable = False
    with pytest.raises(ApiException) as put:
        api.replace_node("gpu-a", stale)
    with pytest.raises(ApiException) as patch:
        api.patch_node("gpu-a", {"metadata": {"resourceVersion": stale.metadata.resource_version}})

    assert put.value.status == 409 and patch.value.status == 409
    assert '"reason": "Conflict"' in put.value.body
    assert api.read_node("gpu-a").spec.unschedulable is True


def use_kubeconfig(double, tmp_path, settings, token: str | None = None) -> None:
    """Point FLOTILLA_KUBECONFIG at a kubeconfig for the double (with a bearer token, if given)."""
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": double.url}}],
        "users": [{"name": "u", "user": {"token": token} if token else {}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig))
    settings.FLOTILLA_KUBECONFIG = str(path)


def test_a_kubeconfig_client_sends_its_token_and_never_logs_it(tmp_path, settings, caplog):
    token = "kube-secret-token-0123456789"
    double = KubeApiDouble(token=token).start()
    try:
        double.add(gpu_node("gpu-a"))
        use_kubeconfig(double, tmp_path, settings, token)
        with caplog.at_level(logging.DEBUG):
            api = client.CoreV1Api(kube_client.api_client())
            _, counts = nodes.relist(api)
        assert counts == {"created": 1}
        assert double.headers[-1]["authorization"] == f"Bearer {token}"
        assert token not in caplog.text
    finally:
        double.stop()


def test_without_a_cluster_it_says_what_to_set(settings, monkeypatch):
    settings.FLOTILLA_KUBECONFIG = None
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(kube_client.ConfigError, match="FLOTILLA_KUBECONFIG"):
        kube_client.api_client()


def test_the_command_lists_once_through_a_kubeconfig(double, tmp_path, settings):
    from io import StringIO

    from django.core.management import call_command

    double.add(gpu_node("gpu-a"))
    use_kubeconfig(double, tmp_path, settings)
    settings.FLOTILLA_KUBERNETES = True
    out = StringIO()

    call_command("kube_nodes", "--once", "--cluster", "local", stdout=out)

    assert "'created': 1" in out.getvalue()
    assert flotilla_node("gpu-a").spec["cluster"] == "local"


def test_the_command_refuses_while_discovery_is_off(settings):
    from django.core.management import CommandError, call_command

    settings.FLOTILLA_KUBERNETES = False
    with pytest.raises(CommandError, match="FLOTILLA_KUBERNETES=true"):
        call_command("kube_nodes", "--once")


def test_the_beat_task_lists_through_the_configured_cluster_and_skips_when_off(double, tmp_path, settings):
    from controlplane import tasks

    double.add(gpu_node("gpu-a"))
    use_kubeconfig(double, tmp_path, settings)

    settings.FLOTILLA_KUBERNETES = False
    assert tasks.sync_kube_nodes() == {"skipped": 1}
    assert not Resource.objects.filter(kind="Node").exists()

    settings.FLOTILLA_KUBERNETES = True
    assert tasks.sync_kube_nodes() == {"created": 1}
    assert flotilla_node("gpu-a") is not None
