"""Pod phase and container state -> the Workload's status (controlplane/kube/pods.py)."""

from __future__ import annotations

import copy
from typing import Any

from controlplane.conditions import set_condition
from controlplane.kube.pod_manifest import CONTAINER, SERVE_PORT, namespace
from controlplane.models import Resource


def observed(workload: Resource, pod: dict[str, Any]) -> dict[str, Any]:
    """The Workload status that the Pod's phase and container state say, in the shape the
    agent's supervisor reports (``Supervisor.status_of``) plus ``status.pod``."""
    metadata, pod_status = pod["metadata"], pod.get("status") or {}
    phase = pod_status.get("phase") or "Pending"
    container = next((c for c in pod_status.get("containerStatuses") or [] if c.get("name") == CONTAINER), {})
    state = container.get("state") or {}
    waiting, terminated = state.get("waiting") or {}, state.get("terminated") or {}
    last = (container.get("lastState") or {}).get("terminated") or {}
    serve = workload.spec.get("runtime", "serve") == "serve"
    ip = pod_status.get("podIP")
    endpoint = None
    scheduled = next((c for c in pod_status.get("conditions") or [] if c.get("type") == "PodScheduled"), {})
    if metadata.get("deletionTimestamp"):
        result = ("Pending", False, "Terminating", f"pod {metadata['name']} is stopping")
    elif phase == "Succeeded":
        result = ("Succeeded", False, "Completed", "training reached its last step")
    elif phase == "Failed":
        reason = terminated.get("reason") or pod_status.get("reason") or "Failed"
        message = terminated.get("message") or pod_status.get("message") or f"pod {metadata['name']} failed"
        result = ("Failed", False, reason, message)
    elif waiting.get("reason") == "CrashLoopBackOff":
        why = f"; last exit {last.get('exitCode')} ({last.get('reason') or 'Error'})" if last else ""
        result = ("Failed", False, "CrashLoopBackOff", (waiting.get("message") or "restarting") + why)
    elif terminated:  # between a crash and the kubelet's next restart
        message = terminated.get("message") or f"exited with code {terminated.get('exitCode')}"
        result = ("Failed", False, terminated.get("reason") or "Error", message)
    elif phase == "Running" and container.get("ready") and "running" in state:
        if serve and ip:
            endpoint = f"http://{ip}:{SERVE_PORT}"
        reason = "Serving" if serve else "Training"
        result = (
            "Running",
            True,
            reason,
            f"serving at {endpoint}" if endpoint else f"running in pod {metadata['name']}",
        )
    elif phase == "Running":
        result = (
            "Starting",
            False,
            "Starting",
            f"pod {metadata['name']} is running; waiting until it is ready",
        )
    elif waiting.get("reason") and waiting["reason"] != "ContainerCreating":
        result = ("Pending", False, waiting["reason"], waiting.get("message") or "")
    elif scheduled.get("status") == "False":
        result = (
            "Pending",
            False,
            scheduled.get("reason") or "Unschedulable",
            scheduled.get("message") or "",
        )
    else:
        reason = waiting.get("reason") or pod_status.get("reason") or "Pending"
        result = ("Pending", False, reason, waiting.get("message") or f"pod {metadata['name']} is pending")
    new_phase, ready, reason, message = result

    status = copy.deepcopy(workload.status)
    status["phase"] = new_phase
    status["observedGeneration"] = workload.generation
    status["restarts"] = int(container.get("restartCount") or 0)
    set_condition(status, "Ready", ready, reason, str(message)[:500])
    if endpoint:
        status["endpoint"] = endpoint
    else:
        status.pop("endpoint", None)
    exit_code = terminated.get("exitCode", last.get("exitCode"))
    if exit_code is not None:
        status["lastExitCode"] = exit_code
    status["pod"] = {
        "name": metadata["name"],
        "namespace": metadata.get("namespace") or namespace(),
        "uid": metadata.get("uid") or "",
        "node": (pod.get("spec") or {}).get("nodeName") or "",
        "ip": ip or "",
        "phase": phase,
    }
    return status
