"""Node lifecycle: registration and heartbeats from agents, and the stale-heartbeat check.

Heartbeats renew a ``NodeLease`` row rather than the Node's status, so a
fleet of agents does not flood the watch log; the Node itself changes only
when its devices, readiness or applied power limits do.
"""

from __future__ import annotations

import copy
import time
from datetime import timedelta
from typing import Any, NamedTuple

from django.conf import settings
from django.db import transaction

from common.timeutil import now, rfc3339
from controlplane import events, power, store
from controlplane.conditions import is_true, set_condition
from controlplane.models import NodeLease, Resource

SOURCE = "node-lifecycle"

# When this process last knew each node's lease to be renewed (time.monotonic()). A
# lease only moves forward, so while this is recent the heartbeat need not read it:
# one query per heartbeat instead of two. Tests clear it with the token cache.
renewed_here: dict[str, float] = {}


def register(
    name: str,
    *,
    cluster: str | None,
    labels: dict[str, str],
    devices: list[dict[str, Any]],
    info: dict[str, Any],
) -> Resource:
    """Create or refresh a Node. The operator's spec edits (cordon, labels) survive a
    re-registration: an existing Node's spec is left alone."""
    with transaction.atomic():
        node = store.find("Node", name)
        if node is None:
            spec = {"cluster": cluster, "unschedulable": False, "labels": labels}
            node = store.create("Node", name, spec)
            events.record(node, "Registered", f"node registered with {len(devices)} devices", source=SOURCE)
        status = copy.deepcopy(node.status)
        status["devices"] = devices
        status["nodeInfo"] = info
        set_condition(status, "Ready", True, "AgentHeartbeat", "agent is posting heartbeats")
        store.update_status(node, status)
        renew(name)
        return node


def renew(name: str) -> None:
    NodeLease.objects.update_or_create(node_name=name, defaults={"renewed_at": now()})
    renewed_here[name] = time.monotonic()


class Beat(NamedTuple):
    """What a heartbeat answers with: the Node's resourceVersion and its desired power limits."""

    resource_version: int
    power_limits: dict[str, float | None]


def heartbeat(
    name: str, devices: list[dict[str, Any]] | None = None, power_report: dict[str, Any] | None = None
) -> Beat:
    """Renew the node's lease; returns the Node's resourceVersion and desired power limits.

    The common case (no device change, node already Ready, no new power report) is
    one small query and no write to the Node, because a fleet heartbeats many times a
    second. ``power_report`` is ``PowerReport.as_status()``: what the agent applied.
    """
    if devices is None:
        rows = Resource.objects.filter(kind="Node", name=name).values_list("status", "resource_version")[:1]
        row = rows[0] if rows else None
        reported = power_report is not None and row is not None and power.report_differs(row[0], power_report)
        if row is not None and not reported and is_true(row[0], "Ready"):
            # Write the lease only when it has aged a little: staleness is judged against
            # FLOTILLA_NODE_TIMEOUT, and every write takes SQLite's single write lock.
            refresh = settings.FLOTILLA_NODE_TIMEOUT / 4
            known = renewed_here.get(name)
            if known is not None and time.monotonic() - known < refresh:
                return Beat(row[1], power.desired_limits(row[0]))
            # One statement that writes only when the lease has aged; a lease that does not
            # exist matches nothing either way, so it is told apart by a second look.
            stamp = now()
            NodeLease.objects.filter(
                node_name=name, renewed_at__lt=stamp - timedelta(seconds=refresh)
            ).update(renewed_at=stamp)
            if known is not None or NodeLease.objects.filter(node_name=name).exists():
                renewed_here[name] = time.monotonic()
                return Beat(row[1], power.desired_limits(row[0]))
    node = _heartbeat(name, devices, power_report)
    return Beat(node.resource_version, power.desired_limits(node.status))


def _heartbeat(
    name: str, devices: list[dict[str, Any]] | None, power_report: dict[str, Any] | None
) -> Resource:
    with transaction.atomic():
        # Locked: a controller may be writing status.power.desired at the same moment.
        node = store.get("Node", name, for_update=True)
        renew(name)
        status = copy.deepcopy(node.status)
        if devices is not None:
            status["devices"] = devices
        if power_report is not None:
            power.record_report(status, power_report)
        if set_condition(status, "Ready", True, "AgentHeartbeat", "agent is posting heartbeats"):
            events.record(node, "NodeReady", "heartbeats resumed", source=SOURCE)
        store.update_status(node, status)
        return node


def last_heartbeat(name: str) -> str | None:
    lease = NodeLease.objects.filter(node_name=name).first()
    return rfc3339(lease.renewed_at) if lease else None


def check_heartbeats() -> int:
    """Mark Ready nodes whose lease is older than FLOTILLA_NODE_TIMEOUT as NotReady."""
    cutoff = now() - timedelta(seconds=settings.FLOTILLA_NODE_TIMEOUT)
    renewed = dict(NodeLease.objects.values_list("node_name", "renewed_at"))
    marked = 0
    for node in Resource.objects.filter(kind="Node"):
        if not is_true(node.status, "Ready"):
            continue
        last = renewed.get(node.name)
        if last is not None and last >= cutoff:
            continue
        with transaction.atomic():
            node = store.find("Node", node.name)
            if node is None:
                continue
            status = copy.deepcopy(node.status)
            silent = f"no heartbeat for over {settings.FLOTILLA_NODE_TIMEOUT:g}s"
            set_condition(status, "Ready", False, "NodeStatusUnknown", silent)
            store.update_status(node, status)
            events.record(
                node,
                "NodeNotReady",
                silent + "; its workloads will be rescheduled",
                type_="Warning",
                source=SOURCE,
            )
            marked += 1
    return marked
