"""Celery tasks: reconcile one object, resync everything, check node heartbeats, measure traffic,
cap power.

Tasks are idempotent and level-triggered, acknowledged late (a task whose
worker dies is redelivered) and retried with jittered backoff.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

from django.db import DatabaseError

from controlplane import leases
from controlplane import reconcile as runner
from controlplane.celeryapp import app
from controlplane.dispatch import RECONCILE_TASK
from controlplane.errors import TemporaryError

log = logging.getLogger(__name__)
OBSERVE_LEASE = "observed-traffic"


def jitter(delay: float) -> float:
    return delay * random.uniform(0.5, 1.5)


# Named explicitly: controlplane.dispatch sends it by this name, without importing it.
@app.task(name=RECONCILE_TASK, bind=True, max_retries=None, acks_late=True, reject_on_worker_lost=True)
def reconcile(self, kind: str, name: str) -> None:
    try:
        runner.run(kind, name)
    except TemporaryError as exc:
        raise self.retry(countdown=jitter(exc.delay), exc=exc) from None
    except DatabaseError as exc:
        # A locked SQLite file or a dropped PostgreSQL connection: back off and retry.
        delay = min(60.0, 2.0 ** min(self.request.retries, 6))
        log.warning("reconcile %s/%s: database error, retrying: %s", kind, name, exc)
        raise self.retry(countdown=jitter(delay), exc=exc) from None


@app.task
def resync() -> int:
    """Enqueue every owner and cluster: catches whatever a lost message missed."""
    return runner.resync()


@app.task
def check_nodes() -> int:
    """Mark nodes whose heartbeat is older than FLOTILLA_NODE_TIMEOUT as not ready."""
    from controlplane.controllers import nodes

    return nodes.check_heartbeats()


@app.task
def observe_traffic() -> dict[str, int]:
    """Measure each serving Deployment's rate and lengths from telemetry (status.observedWorkload).

    A lease keeps two workers from measuring at once; a run that finds it held skips,
    and the next one catches up.
    """
    from controlplane import observed_traffic

    with leases.held(OBSERVE_LEASE, 300.0) as mine:
        if not mine:
            return {"skipped": 1}
        return observed_traffic.observe_all()


@app.task(name="controlplane.tasks.powercap")
def powercap(cluster: str) -> bool:
    """One power-cap pass for ``cluster`` (sent when its nodes' telemetry arrives)."""
    from controlplane.controllers import powercap as controller

    return controller.run(cluster) is not None


@app.task(name="controlplane.tasks.powercap_all")
def powercap_all() -> int:
    """A power-cap pass for every Cluster with a budget (beat, every FLOTILLA_POWERCAP_SECONDS)."""
    from controlplane.controllers import powercap as controller

    return controller.run_all()


def _kubernetes_pass(
    enabled: bool, lease: str, seconds: float, run: Callable[[Any], tuple]
) -> dict[str, int]:
    """One pass of a Kubernetes loop under a lease (two workers never run it at once);
    ``{"skipped": 1}`` when it is off or another worker holds the lease."""
    from controlplane.kube.client import core_api

    if not enabled:
        return {"skipped": 1}
    with leases.held(lease, seconds) as mine:
        if not mine:
            return {"skipped": 1}
        _, counts = run(core_api())
        return dict(counts)


@app.task
def sync_kube_nodes() -> dict[str, int]:
    """Re-list Kubernetes Nodes into Flotilla Nodes (FLOTILLA_KUBERNETES; see docs/kubernetes.md).

    `manage.py kube_nodes` watches for prompt updates; this periodic list catches up
    when that process is not running.
    """
    from django.conf import settings

    from controlplane.kube import nodes

    return _kubernetes_pass(settings.FLOTILLA_KUBERNETES, "kube-nodes", 300.0, nodes.relist)


@app.task
def sync_kube_pods() -> dict[str, int]:
    """One pass of the Kubernetes executor (FLOTILLA_KUBERNETES_EXECUTOR; docs/kubernetes.md):
    Pods for new Workloads, statuses, deletions. `manage.py kube_pods` watches for prompt
    status; this catches up when it is not running."""
    from django.conf import settings

    from controlplane.kube import pods

    return _kubernetes_pass(settings.FLOTILLA_KUBERNETES_EXECUTOR, "kube-pods", 120.0, pods.sync)
