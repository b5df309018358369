"""The Kubernetes executor: Workloads of ``executor: kubernetes`` Clusters run as Pods.

This module keeps Pods and Workloads in step (create, collect, release finalizers, watch);
``pod_manifest`` builds a Workload's Pod and ``pod_status`` reads a Pod back into its
Workload's status.

Decisions (docs/kubernetes.md, "Executor", explains them to operators):

- **One signal, set once.** The owner controller copies the node's Cluster
  ``spec.executor`` into the Workload's ``spec.executor`` when it places it
  (:func:`executor_spec`). The agent skips such Workloads and this module runs exactly
  those, so a Cluster switching executors never has both running one Workload: the
  switch applies to Workloads placed afterwards.
- **The Pod runs what the agent would.** The same ``python -m agents.runtimes.<runtime>
  --config FILE --device ...`` (serve adds ``--host 0.0.0.0 --port 8000``), through the
  image's entrypoint. The config is the Pod's annotation ``flotilla.dev/config``, mounted
  as a file through the Downward API, so no ConfigMap has to be made and collected. The
  Pod is pinned with ``spec.nodeName`` and asks for ``nvidia.com/gpu`` = the Workload's
  GPU count; the device plugin chooses which GPUs (Flotilla's indices are accounting).
- **Restart policy** follows the supervisor: serve ``Always``; train ``OnFailure``
  (a crash restarts it; exit 0 is done). The Pod gets no FLOTILLA_CHECKPOINT_DIR, so the
  training runtime refuses a checkpoint policy there (docs/kubernetes.md).
- **Collected by label, held by a finalizer.** Flotilla objects are not Kubernetes
  objects, so a Pod cannot carry an ownerReference to its Workload. Pods are labelled
  ``flotilla.dev/workload-uid``; one whose Workload is gone is deleted. A Workload gets
  the finalizer ``flotilla.dev/kubernetes-pod`` before its Pod is created, and keeps it
  while it is being deleted until the Pod is gone from Kubernetes, so its owner's own
  finalizer (and so the GPUs) wait for the Pod to stop, as they wait for an agent.
- **A new spec is a new Pod.** Pods are immutable: one made for an older generation
  (annotation ``flotilla.dev/generation``) is deleted and made again.

Status is written in the agent's shape (phase, Ready condition with its reasons,
endpoint, restarts, lastExitCode) plus ``status.pod``, through ``controlplane.store``
under the writers' lock and only when it changed. The kubernetes client is imported by
the functions that talk to the API only: the owner controller imports this module for
:func:`executor_spec`, and the client takes a third of a second to import.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
from collections import Counter
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import DatabaseError, close_old_connections, transaction

from common.envhelpers import ConfigError
from controlplane import events, store
from controlplane.conditions import set_condition
from controlplane.kube.pod_manifest import GENERATION_ANNOTATION, MANAGED_BY, UID_LABEL, manifest, namespace
from controlplane.kube.pod_status import observed
from controlplane.kube.watching import Expired, backoff, describe, watch_pass
from controlplane.models import Resource

if TYPE_CHECKING:
    from kubernetes import client

log = logging.getLogger(__name__)
SOURCE = "kubernetes-executor"
FINALIZER = "flotilla.dev/kubernetes-pod"
SELECTOR = f"{MANAGED_BY}=flotilla,{UID_LABEL}"
PAGE = 500
RESYNC_SECONDS = 15  # run(): a full sync at least this often, watching Pods in between


# --- which Workloads are ours -------------------------------------------------------------


def executor_spec(cluster: str | None) -> dict[str, str]:
    """What a new Workload's spec says about its executor, from its node's Cluster: only
    the non-default one, so agent-run Workloads keep the spec they always had."""
    if not cluster:
        return {}
    spec = Resource.objects.filter(kind="Cluster", name=cluster).values_list("spec", flat=True).first()
    return {"executor": "kubernetes"} if (spec or {}).get("executor") == "kubernetes" else {}


def image() -> str:
    value = settings.FLOTILLA_KUBERNETES_IMAGE
    if not value:
        raise ConfigError(
            "the Kubernetes executor needs an image for its Pods: set FLOTILLA_KUBERNETES_IMAGE "
            "to the Flotilla image (its CUDA variant for GPU Workloads)"
        )
    return value


def kube_node_of(workload: Resource) -> str:
    """The Kubernetes name of the Workload's node: discovery's link, else the same name."""
    node = store.find("Node", workload.node_name)
    linked = ((node.status.get("kubernetes") or {}) if node is not None else {}).get("name")
    return str(linked or workload.node_name)


def record_status(workload: Resource, pod: dict[str, Any]) -> str:
    """Write what the Pod says to its Workload: ``updated`` or ``unchanged``.

    An unlocked read decides first, so a Pod whose state did not change costs no lock
    and no write."""
    if observed(workload, pod) == workload.status:
        return "unchanged"
    with transaction.atomic():
        store.lock_writes()
        current = store.find("Workload", workload.name)
        if current is None or str(current.uid) != str(workload.uid):
            return "unchanged"
        current = store.get("Workload", workload.name, for_update=True)
        before = (current.status.get("phase"), _ready_reason(current.status))
        status = observed(current, pod)
        if not store.update_status(current, status):
            return "unchanged"
        after = (status["phase"], _ready_reason(status))
        if after != before and status["phase"] == "Failed":
            message = next(c for c in status["conditions"] if c["type"] == "Ready")["message"]
            events.record(current, after[1], message, type_="Warning", source=SOURCE)
        return "updated"


def _ready_reason(status: dict[str, Any]) -> str:
    return next((c.get("reason", "") for c in status.get("conditions") or [] if c.get("type") == "Ready"), "")


# --- finalizer ------------------------------------------------------------------------------


def _hold(workload: Resource) -> bool:
    """Add the finalizer before the Pod exists; False when the Workload is gone or going."""
    with transaction.atomic():
        store.lock_writes()
        current = store.find("Workload", workload.name)
        if current is None or str(current.uid) != str(workload.uid):
            return False
        current = store.get("Workload", workload.name, for_update=True)
        if current.deletion_timestamp is not None:
            return False
        store.add_finalizer(current, FINALIZER)
        return True


def release(workload: Resource) -> str:
    """The Pod is gone: lift the finalizer (which removes a Workload being deleted)."""
    with transaction.atomic():
        store.lock_writes()
        current = store.find("Workload", workload.name)
        if current is None or str(current.uid) != str(workload.uid) or FINALIZER not in current.finalizers:
            return "unchanged"
        current = store.get("Workload", workload.name, for_update=True)
        return "released" if store.remove_finalizer(current, FINALIZER) else "unchanged"


# --- the API --------------------------------------------------------------------------------


def list_pods(api: client.CoreV1Api) -> tuple[str, list[dict[str, Any]]]:
    """Flotilla's Pods in the namespace (one snapshot, paged) and the list's version."""
    items: list[dict[str, Any]] = []
    version, token = "", None
    while True:
        response = api.list_namespaced_pod(
            namespace(), label_selector=SELECTOR, limit=PAGE, _continue=token, _preload_content=False
        )
        page = json.loads(response.data)
        version = version or page["metadata"].get("resourceVersion", "")
        items.extend(page.get("items") or [])
        token = page["metadata"].get("continue")
        if not token:
            return version, items


def _delete(api: client.CoreV1Api, pod: dict[str, Any]) -> bool:
    """Ask Kubernetes to delete the Pod; True when it was already gone."""
    from kubernetes.client.exceptions import ApiException

    if pod["metadata"].get("deletionTimestamp"):
        return False  # already stopping
    try:
        api.delete_namespaced_pod(
            pod["metadata"]["name"], pod["metadata"]["namespace"], _preload_content=False
        )
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


def _create(api: client.CoreV1Api, workload: Resource, image_name: str) -> str:
    from kubernetes.client.exceptions import ApiException

    try:
        body = manifest(workload, kube_node_of(workload), image_name)
    except ValueError as exc:  # an unknown runtime: reported as the supervisor does
        return _fail(workload, "Failed", str(exc))
    if not _hold(workload):
        return "skipped"
    try:
        api.create_namespaced_pod(namespace(), body, _preload_content=False)
    except ApiException as exc:
        if exc.status == 409:
            return "conflict"  # an older Pod of that name is still stopping: next pass
        raise
    events.record(
        workload,
        "PodCreated",
        f"pod {namespace()}/{body['metadata']['name']} on node {body['spec']['nodeName']}",
        source=SOURCE,
    )
    return "created"


def _fail(workload: Resource, reason: str, message: str) -> str:
    with transaction.atomic():
        store.lock_writes()
        current = store.get("Workload", workload.name, for_update=True)
        status = copy.deepcopy(current.status)
        status["phase"] = "Failed" if reason == "Failed" else "Pending"
        set_condition(status, "Ready", False, reason, message)
        if not store.update_status(current, status):
            return "unchanged"
        events.record(current, reason, message, type_="Warning", source=SOURCE)
        return "failed"


def ours() -> list[Resource]:
    return list(Resource.objects.filter(kind="Workload", spec__executor="kubernetes").order_by("name"))


def sync(api: client.CoreV1Api) -> tuple[str, Counter[str]]:
    """One level-triggered pass: list the Pods and the Workloads, delete orphans and
    Pods of Workloads being deleted, lift finalizers of those whose Pod is gone, create
    missing Pods, and write statuses. Returns the Pod list's version and what was done.

    Raises ConfigError (after everything else is done) when a Pod is needed and
    FLOTILLA_KUBERNETES_IMAGE is not set."""
    version, items = list_pods(api)
    pods: dict[str, dict[str, Any]] = {}
    counts: Counter[str] = Counter()
    workloads = {str(w.uid): w for w in ours()}
    for pod in items:
        uid = (pod["metadata"].get("labels") or {}).get(UID_LABEL, "")
        if uid in workloads and uid not in pods:
            pods[uid] = pod
            continue
        if not pod["metadata"].get("deletionTimestamp"):
            _delete(api, pod)
            log.info("deleted orphan pod %s", pod["metadata"]["name"])
            counts["orphaned"] += 1
    missing_image: ConfigError | None = None
    for uid, workload in workloads.items():
        pod = pods.get(uid)
        if workload.deletion_timestamp is not None:
            if pod is None or _delete(api, pod):
                counts[release(workload)] += 1
            elif not pod["metadata"].get("deletionTimestamp"):
                events.record(
                    workload, "PodDeleted", f"deleting pod {pod['metadata']['name']}", source=SOURCE
                )
                counts["deleting"] += 1
            else:
                counts["waiting"] += 1
        elif pod is None:
            try:
                counts[_create(api, workload, image())] += 1
            except ConfigError as exc:
                missing_image = exc
                counts[_fail(workload, "ImageNotConfigured", str(exc))] += 1
        elif pod["metadata"].get("annotations", {}).get(GENERATION_ANNOTATION) != str(workload.generation):
            if not pod["metadata"].get("deletionTimestamp"):
                _delete(api, pod)
                counts["replaced"] += 1
            else:
                counts["waiting"] += 1
        else:
            counts[record_status(workload, pod)] += 1
    if missing_image is not None:
        raise missing_image
    return version, counts


def apply_event(event_type: str, pod: dict[str, Any]) -> str:
    """One watched change: a status to write, or a Pod gone whose finalizer can go."""
    uid = (pod["metadata"].get("labels") or {}).get(UID_LABEL, "")
    workload = Resource.objects.filter(kind="Workload", uid=uid).first() if uid else None
    if workload is None:
        return "ignored"  # an orphan: sync deletes it
    if event_type == "DELETED":
        return release(workload) if workload.deletion_timestamp is not None else "ignored"
    if workload.deletion_timestamp is not None:
        return "ignored"
    if (pod["metadata"].get("annotations") or {}).get(GENERATION_ANNOTATION) != str(workload.generation):
        return "ignored"
    return record_status(workload, pod)


def watch_once(
    api: client.CoreV1Api,
    version: str,
    timeout_seconds: int = RESYNC_SECONDS,
    stop: threading.Event | None = None,
) -> tuple[str, Counter[str]]:
    """Apply Pod changes after ``version`` until the server ends the watch; Expired on 410."""
    return watch_pass(
        api.list_namespaced_pod,
        version,
        apply_event,
        timeout_seconds,
        stop,
        namespace=namespace(),
        label_selector=SELECTOR,
    )


def run(api: client.CoreV1Api, stop: threading.Event, timeout_seconds: int = RESYNC_SECONDS) -> None:
    """Sync, then watch the Pods for ``timeout_seconds``, until ``stop`` is set.

    Workloads live in Flotilla's database, not in Kubernetes, so new ones are found by
    the next sync; Pod changes in between are applied as they are watched. A 410 or an
    error ends the watch early (errors back off) and the next pass lists again."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    failures = 0
    server = api.api_client.configuration.host
    while not stop.is_set():
        close_old_connections()
        try:
            version, counts = sync(api)
            if counts:
                log.info("Kubernetes executor sync against %s: %s", server, dict(counts))
            _, changes = watch_once(api, version, timeout_seconds, stop)
            if changes:
                log.info("Kubernetes pod changes: %s", dict(changes))
            failures = 0
        except Expired as exc:
            log.info("%s; listing again", exc)
        except (ApiException, HTTPError, OSError, DatabaseError, ConfigError) as exc:
            failures += 1
            delay = backoff(failures)
            log.warning(
                "Kubernetes executor against %s failed (%s); retrying in %.0fs", server, describe(exc), delay
            )
            stop.wait(delay)
