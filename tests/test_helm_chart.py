"""The Helm chart in helm/flotilla, rendered and linted through Helm's own Go SDK.

`helm-python-sdk` (the test extra) binds Helm v4's SDK through ctypes, so these
tests need neither a `helm` binary nor a cluster: they render the chart with
several value sets exactly as `helm template` would, run `helm lint --strict`
with a Kubernetes version on each, and check the rendered objects. No cluster is
reachable, so `lookup` returns nothing: the "kept across upgrades" branch of the
generated Secrets is exercised by reading the templates, not by an upgrade.
Helm's lint checks the YAML, the chart metadata, object names and API versions
deprecated or removed in that Kubernetes version; it does not validate every
field against the Kubernetes OpenAPI schema (that needs an API server), so the
checks below cover the fields that matter here.
"""

from __future__ import annotations

import base64
import re
import tomllib
from pathlib import Path

import pytest
import yaml

helm = pytest.importorskip(
    "helm_python",
    reason="helm-python-sdk is not installed (pip install -e '.[test]'); the Helm chart tests need it",
)

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "flotilla"
RELEASE = "demo"
NAMESPACE = "gpu-fleet"
FULLNAME = "demo-flotilla"
KUBE_VERSIONS = ["v1.27.0", "v1.31.0"]
WORKLOAD_KINDS = {"Deployment", "DaemonSet", "StatefulSet"}


def production_values() -> dict:
    return yaml.safe_load((CHART / "values-production.yaml").read_text())


EXTERNAL = {
    "postgresql": {
        "external": {"url": "postgresql://flotilla:pw@db.example.internal:5432/flotilla"},
        "internal": {"enabled": False},
    },
    "redis": {
        "external": {"url": "redis://:pw@redis.example.internal:6379/0"},
        "internal": {"enabled": False},
    },
}
INGRESS = {
    "ingress": {
        "enabled": True,
        "className": "nginx",
        "hosts": ["flotilla.example.com"],
        "tls": [{"secretName": "flotilla-tls", "hosts": ["flotilla.example.com"]}],
    }
}
EXECUTOR = {
    "kubernetesExecutor": {"enabled": True},
    "worker": {"autoscaling": {"enabled": True}},
    "metrics": {"serviceMonitor": {"enabled": True}},
}

VALUE_SETS = {
    "defaults": {},
    "external-databases": EXTERNAL,
    "ingress": INGRESS,
    "kubernetes-executor": EXECUTOR,
    "production": production_values(),
}


def render(values: dict | None = None) -> dict[str, str]:
    with helm.Chart.load(CHART) as chart:
        return chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)


def objects(values: dict | None = None) -> list[dict]:
    docs = []
    for path, text in render(values).items():
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def pod_specs(docs: list[dict]):
    """(object, pod spec) of every workload and Job."""
    for doc in docs:
        if doc["kind"] in WORKLOAD_KINDS | {"Job"}:
            yield doc, doc["spec"]["template"]["spec"]


def existing_secret_names(values: dict) -> set[str]:
    """Secrets the values say the operator created (they are not in the render)."""
    names = {values.get("secrets", {}).get("existingSecret")}
    for db in ("postgresql", "redis"):
        section = values.get(db, {})
        names.add(section.get("external", {}).get("existingSecret"))
        names.add(section.get("internal", {}).get("existingSecret"))
    names.update(tls["secretName"] for tls in values.get("ingress", {}).get("tls", []))
    return {name for name in names if name}


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def rendered(request) -> tuple[str, dict, list[dict]]:
    values = VALUE_SETS[request.param]
    return request.param, values, objects(values)


def test_app_version_matches_package_version():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == pyproject["project"]["version"]
    with helm.Chart.load(CHART) as loaded:
        assert loaded.metadata["appVersion"] == pyproject["project"]["version"]


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_lint_strict_is_clean(name, kube_version):
    report = helm.lint(CHART, VALUE_SETS[name], strict=True, namespace=NAMESPACE, kube_version=kube_version)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report
    # The one informational finding Helm makes: the chart has no icon.
    assert all(m["error"] == "icon is recommended" for m in report["messages"]), report


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_values_pass_the_schema(name):
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(VALUE_SETS[name])


def test_every_workload_container_has_probes_resources_and_a_non_root_context(rendered):
    name, _, docs = rendered
    for obj, spec in pod_specs(docs):
        pod_ctx = spec.get("securityContext", {})
        assert pod_ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault", obj["metadata"]["name"]
        for container in spec.get("initContainers", []) + spec["containers"]:
            where = f"{name}: {obj['kind']}/{obj['metadata']['name']} container {container['name']}"
            # The migration Job runs to completion: probes would only add restarts.
            if obj["kind"] != "Job":
                assert "livenessProbe" in container and "readinessProbe" in container, where
            resources = container.get("resources", {})
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), where
            assert {"cpu", "memory"} <= set(resources.get("limits", {})), where
            ctx = {**pod_ctx, **container.get("securityContext", {})}
            assert ctx.get("runAsNonRoot") is True and ctx.get("runAsUser", 0) != 0, where
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert not sc.get("privileged"), where
            if sc["readOnlyRootFilesystem"] and obj["metadata"]["name"].startswith(f"{FULLNAME}-"):
                mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
                assert "/tmp" in mounts or "redis" in container["name"], where


def test_flotilla_containers_run_as_uid_10001(rendered):
    _, _, docs = rendered
    for obj, spec in pod_specs(docs):
        if obj["metadata"]["labels"]["app.kubernetes.io/component"] in ("postgresql", "redis"):
            continue  # the official images' own users
        assert spec["securityContext"]["runAsUser"] == 10001
        for container in spec["containers"]:
            assert container["securityContext"]["runAsUser"] == 10001


def test_web_probes_use_healthz_and_readyz(rendered):
    _, _, docs = rendered
    web = by_kind(docs, "Deployment")[f"{FULLNAME}-web"]
    container = web["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["web"]
    assert container["ports"][0]["containerPort"] == 8000
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # The probes' Host header must be one ALLOWED_HOSTS admits, or Django answers 400.
    headers = {h["name"]: h["value"] for h in container["readinessProbe"]["httpGet"]["httpHeaders"]}
    config = by_kind(docs, "ConfigMap")[FULLNAME]
    assert headers["Host"] in config["data"]["ALLOWED_HOSTS"].split(",")


def test_selectors_match_pod_labels_and_services_find_pods(rendered):
    _, _, docs = rendered
    pod_labels = []
    for obj, _ in pod_specs(docs):
        labels = obj["spec"]["template"]["metadata"]["labels"]
        if obj["kind"] != "Job":
            selector = obj["spec"]["selector"]["matchLabels"]
            assert selector.items() <= labels.items(), obj["metadata"]["name"]
        pod_labels.append(labels)
    for kind in ("Service", "PodDisruptionBudget"):
        for obj in by_kind(docs, kind).values():
            selector = obj["spec"]["selector"]
            selector = selector.get("matchLabels", selector)
            assert any(selector.items() <= labels.items() for labels in pod_labels), obj["metadata"]
    for monitor in by_kind(docs, "ServiceMonitor").values():
        selector = monitor["spec"]["selector"]["matchLabels"]
        services = by_kind(docs, "Service").values()
        assert any(selector.items() <= s["metadata"]["labels"].items() for s in services)
    for hpa in by_kind(docs, "HorizontalPodAutoscaler").values():
        assert hpa["spec"]["scaleTargetRef"]["name"] in by_kind(docs, "Deployment")


def test_every_referenced_secret_configmap_and_service_account_exists(rendered):
    name, values, docs = rendered
    secrets = set(by_kind(docs, "Secret")) | existing_secret_names(values)
    configmaps = set(by_kind(docs, "ConfigMap"))
    accounts = set(by_kind(docs, "ServiceAccount")) | {"default"}
    for obj, spec in pod_specs(docs):
        where = f"{name}: {obj['kind']}/{obj['metadata']['name']}"
        assert spec.get("serviceAccountName", "default") in accounts, where
        for container in spec["containers"]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in configmaps, where
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets, where
            for env in container.get("env", []):
                ref = env.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    assert ref["secretKeyRef"]["name"] in secrets, (where, env["name"])
                if "configMapKeyRef" in ref:
                    assert ref["configMapKeyRef"]["name"] in configmaps, (where, env["name"])
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets, where
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps, where
    for ingress in by_kind(docs, "Ingress").values():
        for tls in ingress["spec"].get("tls", []):
            assert tls["secretName"] in secrets
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"]["name"] in by_kind(docs, "Service")
    for binding in list(by_kind(docs, "RoleBinding").values()) + list(
        by_kind(docs, "ClusterRoleBinding").values()
    ):
        roles = by_kind(docs, binding["roleRef"]["kind"])
        assert binding["roleRef"]["name"] in roles
        for subject in binding["subjects"]:
            assert subject["name"] in accounts and subject["namespace"] == NAMESPACE


def test_control_plane_gets_the_settings_production_needs(rendered):
    _, _, docs = rendered
    for role in ("web", "worker", "beat"):
        container = by_kind(docs, "Deployment")[f"{FULLNAME}-{role}"]["spec"]["template"]["spec"]
        env = {e["name"]: e for e in container["containers"][0]["env"]}
        for needed in ("DATABASE_URL", "CELERY_BROKER_URL", "SECRET_KEY"):
            assert needed in env, (role, needed)
        assert "secretKeyRef" in env["SECRET_KEY"]["valueFrom"]
        # Credentials never appear in the pod spec in clear.
        for var in ("DATABASE_URL", "CELERY_BROKER_URL"):
            value = env[var].get("value", "")
            assert "secretKeyRef" in env[var].get("valueFrom", {}) or "$(FLOTILLA_" in value
            assert ":pw@" not in value
    config = by_kind(docs, "ConfigMap")[FULLNAME]["data"]
    assert config["DEBUG"] == "false"
    assert f"{FULLNAME}.{NAMESPACE}.svc" in config["ALLOWED_HOSTS"].split(",")


def test_beat_is_a_single_recreated_pod(rendered):
    _, _, docs = rendered
    beat = by_kind(docs, "Deployment")[f"{FULLNAME}-beat"]
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}


def test_migration_job_is_a_pre_install_and_pre_upgrade_hook():
    external = by_kind(objects(EXTERNAL), "Job")[f"{FULLNAME}-migrate"]
    assert external["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert external["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]
    # The in-chart PostgreSQL does not exist before install: migrate after it.
    internal = by_kind(objects(), "Job")[f"{FULLNAME}-migrate"]
    assert internal["metadata"]["annotations"]["helm.sh/hook"] == "post-install,pre-upgrade"
    # What the hook reads exists before it: hooks of a lower weight.
    for docs in (objects(EXTERNAL), objects()):
        for obj in [*by_kind(docs, "ConfigMap").values(), by_kind(docs, "Secret")[f"{FULLNAME}-secrets"]]:
            annotations = obj["metadata"]["annotations"]
            assert "pre-install" in annotations["helm.sh/hook"]
            assert int(annotations["helm.sh/hook-weight"]) < 0


def test_agent_runs_only_on_gpu_nodes(rendered):
    _, _, docs = rendered
    agent = by_kind(docs, "DaemonSet")[f"{FULLNAME}-agent"]
    spec = agent["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"] == [
        {"matchExpressions": [{"key": "nvidia.com/gpu.present", "operator": "In", "values": ["true"]}]}
    ]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert spec["runtimeClassName"] == "nvidia"
    assert spec["automountServiceAccountToken"] is False
    container = spec["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"]["value"] == "all"
    assert env["FLOTILLA_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "bootstrap-token"
    assert "--power-backend=off" in container["args"]
    assert f"--server=http://{FULLNAME}.{NAMESPACE}.svc:80" in container["args"]


def test_agent_gpu_label_and_runtime_class_are_configurable():
    values = {"agent": {"gpuNodeLabel": "accelerator", "gpuNodeLabelValue": "h100", "runtimeClassName": ""}}
    spec = by_kind(objects(values), "DaemonSet")[f"{FULLNAME}-agent"]["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"accelerator": "h100"}
    expr = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert expr["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == ["h100"]
    assert "runtimeClassName" not in spec
    assert "DaemonSet" not in {d["kind"] for d in objects({"agent": {"enabled": False}})}


def test_agent_power_limits_add_only_sys_admin():
    """The documented exception to non-root: NVML power limits need root with CAP_SYS_ADMIN."""
    spec = by_kind(objects({"agent": {"power": {"enabled": True}}}), "DaemonSet")[f"{FULLNAME}-agent"]
    container = spec["spec"]["template"]["spec"]["containers"][0]
    assert "--power-backend=nvml" in container["args"]
    ctx = container["securityContext"]
    assert ctx["capabilities"] == {"drop": ["ALL"], "add": ["SYS_ADMIN"]}
    assert ctx["runAsUser"] == 0 and ctx["allowPrivilegeEscalation"] is False
    assert ctx["readOnlyRootFilesystem"] is True and not ctx.get("privileged")
    values_text = (CHART / "values.yaml").read_text()
    assert "CAP_SYS_ADMIN" in values_text and "nvmlDeviceSetPowerManagementLimit" in values_text


def test_rbac_reads_nodes_and_manages_pods_only_with_the_executor():
    docs = objects()
    (nodes,) = by_kind(docs, "ClusterRole").values()
    assert nodes["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}]
    assert by_kind(docs, "Role") == {}
    executor = objects(EXECUTOR)
    (role,) = by_kind(executor, "Role").values()
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "create", "delete"]}
    ]
    web = by_kind(executor, "Deployment")[f"{FULLNAME}-web"]["spec"]["template"]["spec"]
    (binding,) = by_kind(executor, "RoleBinding").values()
    assert binding["subjects"][0]["name"] == web["serviceAccountName"]


def test_pdbs_hpa_and_service_monitor_toggles():
    docs = objects()
    assert set(by_kind(docs, "PodDisruptionBudget")) == {f"{FULLNAME}-web", f"{FULLNAME}-worker"}
    assert by_kind(docs, "HorizontalPodAutoscaler") == {} and by_kind(docs, "ServiceMonitor") == {}
    monitored = objects({"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kps"}}}})
    (monitor,) = by_kind(monitored, "ServiceMonitor").values()
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert monitor["spec"]["endpoints"][0]["port"] == "http"
    prod = objects(production_values())
    assert by_kind(prod, "HorizontalPodAutoscaler")[f"{FULLNAME}-worker"]["spec"]["maxReplicas"] == 20
    assert "replicas" not in by_kind(prod, "Deployment")[f"{FULLNAME}-worker"]["spec"]


def test_database_sources():
    defaults = objects()
    assert {f"{FULLNAME}-postgresql", f"{FULLNAME}-redis"} <= set(by_kind(defaults, "StatefulSet"))
    external = objects(EXTERNAL)
    assert by_kind(external, "StatefulSet") == {}
    urls = by_kind(external, "Secret")[f"{FULLNAME}-urls"]
    assert set(urls["data"]) == {"database-url", "broker-url"}
    prod = objects(production_values())
    assert by_kind(prod, "StatefulSet") == {}
    assert set(by_kind(prod, "Secret")) == set()  # every credential comes from the operator's Secrets
    env = {
        e["name"]: e
        for e in by_kind(prod, "Deployment")[f"{FULLNAME}-web"]["spec"]["template"]["spec"]["containers"][0][
            "env"
        ]
    }
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "flotilla-database", "key": "url"}


def test_no_database_configured_fails_with_a_readable_message():
    values = {"postgresql": {"internal": {"enabled": False}}}
    with pytest.raises(
        helm.HelmError, match="set postgresql.external.url or postgresql.external.existingSecret"
    ):
        render(values)


def test_generated_secrets_have_the_right_shape_and_use_lookup():
    secret = by_kind(objects(), "Secret")[f"{FULLNAME}-secrets"]

    token = base64.b64decode(secret["data"]["bootstrap-token"]).decode()
    assert re.fullmatch(r"flt_[0-9a-f]{12}_[A-Za-z0-9]{43}", token)
    assert len(base64.b64decode(secret["data"]["secret-key"])) == 64
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    assert 'lookup "v1" "Secret"' in helpers
    for template in ("secrets.yaml", "postgresql.yaml", "redis.yaml"):
        assert "flotilla.existingSecretValue" in (CHART / "templates" / template).read_text()


@pytest.mark.parametrize(
    ("values", "field", "complaint"),
    [
        ({"web": {"replicas": "two"}}, "/web/replicas", "got string, want integer"),
        ({"agent": {"power": {"enabled": "yes"}}}, "/agent/power/enabled", "got string, want boolean"),
        ({"webReplicas": 2}, "additional properties 'webReplicas' not allowed", ""),
        ({"ingress": {"enabled": True}}, "/ingress/hosts", "minItems"),
    ],
)
def test_schema_rejects_bad_values_with_a_readable_error(values, field, complaint):
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError) as caught:
        chart.validate_schema(values)
    assert field in str(caught.value) and complaint in str(caught.value)
    # Rendering (what `helm install` does) refuses the same values.
    with pytest.raises(helm.HelmError, match=re.escape(field)):
        render(values)


def test_notes_tell_the_url_and_how_to_get_the_admin_token():
    notes = render(INGRESS)["flotilla/templates/NOTES.txt"]
    assert "https://flotilla.example.com/" in notes
    assert f"exec deploy/{FULLNAME}-web" in notes and "flotilla_bootstrap" in notes
    assert "user create" in notes and "token create" in notes
    notes = render()["flotilla/templates/NOTES.txt"]
    assert f"port-forward svc/{FULLNAME} 8000:80" in notes
    assert "evaluation only" in notes
    assert "evaluation only" not in render(production_values())["flotilla/templates/NOTES.txt"]


def test_every_value_is_commented():
    """Each key in values.yaml has a comment right above it, except the keys of a
    Kubernetes snippet (resources, tolerations, affinity) whose own key has one."""
    snippet_keys = ("resources:", "tolerations:", "affinity:")
    stack: list[tuple[int, bool, bool]] = []  # (indent, documented, is snippet)
    previous = ""
    undocumented = []
    for number, line in enumerate((CHART / "values.yaml").read_text().splitlines(), 1):
        stripped = line.strip()
        if not stripped:
            continue
        indent = len(line) - len(stripped)
        match = re.match(r"([\w.-]+):", stripped)
        if match and not stripped.startswith("#"):
            while stack and stack[-1][0] >= indent:
                stack.pop()
            documented = previous.startswith("#")
            inside_snippet = any(doc and snippet for _, doc, snippet in stack)
            if not documented and not inside_snippet:
                undocumented.append(f"{number}: {stripped}")
            stack.append((indent, documented, stripped.startswith(snippet_keys)))
        if not stripped.startswith("- "):
            previous = stripped
    assert undocumented == [], "\n".join(undocumented)


def test_node_discovery_runs_one_watcher_with_the_service_account_bound_to_read_nodes():
    docs = objects()
    watcher = by_kind(docs, "Deployment")[f"{RELEASE}-flotilla-kube-nodes"]
    pod = watcher["spec"]["template"]["spec"]
    assert watcher["spec"]["replicas"] == 1
    assert pod["containers"][0]["args"] == ["python", "-m", "django", "kube_nodes"]
    (binding,) = by_kind(docs, "ClusterRoleBinding").values()
    assert {"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": NAMESPACE} in binding[
        "subjects"
    ]
    (config,) = by_kind(docs, "ConfigMap").values()
    assert config["data"]["FLOTILLA_KUBERNETES"] == "true"

    off = objects({"nodeDiscovery": {"enabled": False}})
    assert f"{RELEASE}-flotilla-kube-nodes" not in by_kind(off, "Deployment")
    assert by_kind(off, "ClusterRole") == {}
    (config,) = by_kind(off, "ConfigMap").values()
    assert config["data"]["FLOTILLA_KUBERNETES"] == "false"


def test_the_kubernetes_executor_runs_one_executor_with_the_agent_image_and_pod_rights():
    docs = objects(EXECUTOR)
    executor = by_kind(docs, "Deployment")[f"{RELEASE}-flotilla-kube-pods"]
    pod = executor["spec"]["template"]["spec"]
    assert executor["spec"]["replicas"] == 1
    assert pod["containers"][0]["args"] == ["python", "-m", "django", "kube_pods"]
    (config,) = by_kind(docs, "ConfigMap").values()
    assert config["data"]["FLOTILLA_KUBERNETES_EXECUTOR"] == "true"
    agent = next(iter(by_kind(docs, "DaemonSet").values()))
    assert (
        config["data"]["FLOTILLA_KUBERNETES_IMAGE"]
        == agent["spec"]["template"]["spec"]["containers"][0]["image"]
    )
    (binding,) = by_kind(docs, "RoleBinding").values()
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"]

    off = objects()
    assert f"{RELEASE}-flotilla-kube-pods" not in by_kind(off, "Deployment")
    (config,) = by_kind(off, "ConfigMap").values()
    assert "FLOTILLA_KUBERNETES_IMAGE" not in config["data"]


def test_the_service_monitor_scrapes_metrics_on_the_web_service_and_pods_admit_their_ip():
    docs = objects({"metrics": {"serviceMonitor": {"enabled": True}}})
    (monitor,) = by_kind(docs, "ServiceMonitor").values()
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    web = by_kind(docs, "Deployment")[f"{FULLNAME}-web"]["spec"]["template"]["spec"]["containers"][0]
    pod_ip = next(e for e in web["env"] if e["name"] == "FLOTILLA_POD_IP")
    assert pod_ip["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
