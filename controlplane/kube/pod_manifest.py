"""The Pod the Kubernetes executor makes for one Workload (controlplane/kube/pods.py).

It runs what the node agent's supervisor would run, pinned to the Workload's node, asking
for its GPUs as ``nvidia.com/gpu``, with the config mounted from an annotation through
the Downward API; the reasons are in pods.py's docstring.
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings

from controlplane.models import Resource

WORKLOAD_LABEL = "flotilla.dev/workload"
UID_LABEL = "flotilla.dev/workload-uid"
MANAGED_BY = "app.kubernetes.io/managed-by"
CONFIG_ANNOTATION = "flotilla.dev/config"
GENERATION_ANNOTATION = "flotilla.dev/generation"
CONFIG_DIR = "/etc/flotilla/workload"
CONTAINER = "workload"
SERVE_PORT = 8000
GPU_RESOURCE = "nvidia.com/gpu"
IMAGE_USER = 10001  # the image's non-root user (Dockerfile)


def namespace() -> str:
    return settings.FLOTILLA_KUBERNETES_NAMESPACE or "default"


def pod_name(workload: Resource) -> str:
    return f"flotilla-{workload.name}"


def runtime_args(spec: dict[str, Any]) -> list[str]:
    """The agent supervisor's command (agents/supervisor.py), for the image's Python."""
    from agents.supervisor import RUNTIMES

    runtime = spec.get("runtime", "serve")
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; the executor runs {', '.join(sorted(RUNTIMES))}")
    argv = ["python", "-m", f"agents.runtimes.{runtime}", "--config", f"{CONFIG_DIR}/config.json"]
    argv += ["--device", "auto" if spec.get("gpus") else "cpu"]
    if runtime == "serve":
        argv += ["--host", "0.0.0.0", "--port", str(SERVE_PORT)]  # noqa: S104 - the Pod's own IP
    return argv


def manifest(workload: Resource, kube_node: str, image_name: str) -> dict[str, Any]:
    """The Pod for one Workload (a plain JSON dict, as sent on the wire)."""
    spec = workload.spec
    serve = spec.get("runtime", "serve") == "serve"
    gpus = len(spec.get("gpus") or [])
    env = [
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "FLOTILLA_WORKLOAD", "value": workload.name},
        {"name": "HOME", "value": "/var/lib/flotilla"},
    ]
    if not gpus:  # the NVIDIA runtime would otherwise expose every GPU to a CPU Workload
        env.append({"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"})
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image_name,
        "args": runtime_args(spec),
        "env": env,
        "resources": {"limits": {GPU_RESOURCE: str(gpus)}} if gpus else {},
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "home", "mountPath": "/var/lib/flotilla"},
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - an emptyDir
        ],
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": IMAGE_USER,
            "runAsGroup": IMAGE_USER,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if serve:
        container["ports"] = [{"name": "http", "containerPort": SERVE_PORT, "protocol": "TCP"}]
        container["readinessProbe"] = {
            "httpGet": {"path": "/health", "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 3,
        }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(workload),
            "namespace": namespace(),
            "labels": {
                MANAGED_BY: "flotilla",
                WORKLOAD_LABEL: workload.name,
                UID_LABEL: str(workload.uid),
            },
            "annotations": {
                CONFIG_ANNOTATION: json.dumps(spec.get("config") or {}, sort_keys=True),
                GENERATION_ANNOTATION: str(workload.generation),
            },
        },
        "spec": {
            "nodeName": kube_node,
            "restartPolicy": "Always" if serve else "OnFailure",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 30,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": IMAGE_USER,
                "runAsGroup": IMAGE_USER,
                "fsGroup": IMAGE_USER,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [container],
            "volumes": [
                {
                    "name": "config",
                    "downwardAPI": {
                        "items": [
                            {
                                "path": "config.json",
                                "fieldRef": {"fieldPath": f"metadata.annotations['{CONFIG_ANNOTATION}']"},
                            }
                        ]
                    },
                },
                {"name": "home", "emptyDir": {}},
                {"name": "tmp", "emptyDir": {}},
            ],
        },
    }
