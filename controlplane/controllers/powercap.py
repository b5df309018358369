"""Power-cap controller: keep each Cluster's GPU draw under ``spec.powerBudgetWatts``.

For a Cluster with a budget, it reads every GPU's newest telemetry (draw, limit,
utilisation), who uses the GPU and that owner's ``spec.priority``, and asks the Cluster's
powercap plugin (``spec.policies.powercap``) for limits. It writes what changed to the
Nodes' ``status.power.desired`` (``controlplane.power.set_desired_limits``: only controllers
write desired state); each node's agent applies them through its power backend, clamped to
the board's range, and reports what it applied with its next heartbeat.

Safety rules that hold whatever the plugin decides:

- a GPU whose node sent no telemetry within ``FLOTILLA_POWERCAP_STALE_SECONDS`` counts as
  drawing its current limit (the most it can draw), never zero;
- a cap is never below the board's minimum nor above its maximum (clamped here, and again
  by the agent);
- when the budget cannot be met even with every GPU at its minimum, the condition
  ``PowerWithinBudget`` is False with reason ``BudgetUnmeetable`` and the shortfall in
  watts, and the owner controller places no new work on the Cluster until there is
  headroom (:func:`blocked_clusters`).

Without a budget, or with no powercap policy, the caps this controller asked for are
lifted and ``status.power`` is removed. Hysteresis belongs to the plugin (``polca`` holds
its caps between its release and cap thresholds); the only memory between passes is the
limits the GPUs carry.

Runs from beat every ``FLOTILLA_POWERCAP_SECONDS`` and when telemetry arrives from a node
of a capped Cluster (:func:`telemetry_arrived`, throttled to one pass per Cluster per
``FLOTILLA_POWERCAP_MIN_INTERVAL``), each pass under a lease so two workers never decide
for one Cluster at once.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction

from common.specs import MAX_POWER_LIMIT_WATTS, priority_value
from common.timeutil import now, rfc3339
from controlplane import events, fleet, leases, policies, power, store
from controlplane.conditions import get_condition, set_condition
from controlplane.models import Resource
from controlplane.telemetry import store as telemetry_store
from plugins.powercaps import shortfall
from plugins.types import GpuPower, PowerBudget, PowerDecision

log = logging.getLogger(__name__)
CONDITION = "PowerWithinBudget"
SOURCE_PREFIX = "powercap/"
# The status lists at most this many capped GPUs (the counts cover all of them).
MAX_LISTED_CAPS = 64
# A board whose range the agent did not report is not capped below this share of its
# default limit: real boards accept 0.3-0.5 of it, so half is the safe guess.
UNKNOWN_MIN_SHARE = 0.5
POWERCAP_TASK = "controlplane.tasks.powercap"


@dataclass
class Pass:
    """What one pass saw and did, for the status, the events and the tests."""

    gpus: list[GpuPower]
    decision: PowerDecision
    limits: dict[tuple[str, int], float]  # each GPU's limit once the decision is applied
    shortfall: float
    stale_nodes: list[str]


# --- reading the fleet -------------------------------------------------------------------------


def _device_range(device: dict[str, Any]) -> tuple[float, float] | None:
    """The board's (min, max) limit from what the agent registered, or None for a CPU."""
    if device.get("type") == "CPU":
        return None
    top = device.get("defaultPowerLimitW") or device.get("powerLimitW")
    span = device.get("powerLimitRangeW")
    if not isinstance(top, int | float) or not 0 < top <= MAX_POWER_LIMIT_WATTS:
        top = None
    if (
        isinstance(span, list | tuple)
        and len(span) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in span)
        and 0 < span[0] <= span[1] <= MAX_POWER_LIMIT_WATTS
    ):
        low, high = float(span[0]), float(span[1])
        return low, max(low, min(high, float(top or high)))
    if top is None:
        return None
    return float(top) * UNKNOWN_MIN_SHARE, float(top)


def _owner_priorities(owners: set[str]) -> dict[str, int]:
    kinds: dict[str, set[str]] = defaultdict(set)
    for owner in owners:
        kind, _, name = owner.partition("/")
        kinds[kind].add(name)
    found: dict[str, int] = {}
    for kind, names in kinds.items():
        for name, spec in Resource.objects.filter(kind=kind, name__in=names).values_list("name", "spec"):
            found[f"{kind}/{name}"] = priority_value(spec.get("priority"), kind)
    return found


def read_gpus(cluster: str) -> tuple[list[GpuPower], list[str]]:
    """Every GPU of ``cluster``'s Nodes as the plugins see it, and the nodes whose
    telemetry is stale (their GPUs count at their current limit)."""
    nodes = list(Resource.objects.filter(kind="Node", cluster=cluster).order_by("name"))
    samples = telemetry_store.latest_many(node.name for node in nodes)
    taken = fleet.allocations()
    priorities = _owner_priorities({owner for (name, _), owner in taken.items() if owner})
    stale_after = settings.FLOTILLA_POWERCAP_STALE_SECONDS
    gpus: list[GpuPower] = []
    stale_nodes: list[str] = []
    for node in nodes:
        sample = samples.get(node.name)
        stale = sample is None or sample["ageSeconds"] > stale_after
        readings = {} if stale else {int(d["index"]): d for d in sample["devices"] if "index" in d}
        applied = (node.status.get("power") or {}).get("applied") or {}
        listed = False
        for device in node.status.get("devices") or []:
            span = _device_range(device) if isinstance(device, dict) else None
            if span is None or "index" not in device:
                continue
            index = int(device["index"])
            reading = readings.get(index, {})
            # What the board has now, as the agent reported it: not what was asked for. A pass
            # that runs before the agent applied the last one's limits sees the draw those
            # limits have not cut yet; deciding from the asked-for limits, a plugin would read
            # that draw as its caps failing and cap other GPUs harder.
            limit = applied.get(str(index)) or reading.get("powerLimitW") or span[1]
            limit = min(span[1], max(span[0], float(limit)))
            # No fresh reading: the GPU may be drawing anything up to its limit.
            draw = limit if stale or reading.get("powerW") is None else float(reading["powerW"])
            owner = taken.get((node.name, index))
            gpus.append(
                GpuPower(
                    node=node.name,
                    index=index,
                    gpu_type=str(device.get("type", "unknown")),
                    draw_watts=draw,
                    limit_watts=limit,
                    min_watts=span[0],
                    max_watts=span[1],
                    utilisation=None if stale else reading.get("utilization"),
                    owner=owner,
                    priority=priorities.get(owner, 0) if owner else 0,
                    stale=stale,
                )
            )
            listed = True
        if stale and listed:
            stale_nodes.append(node.name)
    return gpus, stale_nodes


# --- deciding ----------------------------------------------------------------------------------


def _clamped(decision: PowerDecision, gpus: list[GpuPower]) -> dict[tuple[str, int], float | None]:
    """The plugin's limits for GPUs it may set, within each board's range; a limit at the
    board's maximum is a lift."""
    by_key = {(g.node, g.index): g for g in gpus}
    out: dict[tuple[str, int], float | None] = {}
    for key, watts in decision.limits.items():
        gpu = by_key.get(key)
        if gpu is None:
            continue
        if watts is None or watts >= gpu.max_watts:
            out[key] = None
        else:
            # A tenth of a watt, rounded down: rounding up would give a GPU more than asked.
            out[key] = math.floor(max(gpu.min_watts, float(watts)) * 10) / 10
    return out


def decide(cluster: str, budget: float, plugin: Any, params: Any) -> Pass:
    gpus, stale_nodes = read_gpus(cluster)
    decision = plugin.decide(budget=PowerBudget(cluster, budget), gpus=gpus, params=params)
    wanted = _clamped(decision, gpus)
    limits: dict[tuple[str, int], float] = {}
    for g in gpus:
        key = (g.node, g.index)
        asked = wanted.get(key, g.limit_watts)
        limits[key] = g.max_watts if asked is None else asked
    decision.limits = wanted
    return Pass(gpus, decision, limits, round(shortfall(PowerBudget(cluster, budget), gpus), 1), stale_nodes)


# --- writing -----------------------------------------------------------------------------------


def _write_limits(cluster: str, source: str, wanted: dict[tuple[str, int], float | None]) -> None:
    by_node: dict[str, dict[int, float | None]] = defaultdict(dict)
    for (node, index), watts in wanted.items():
        by_node[node][index] = watts
    for node, limits in sorted(by_node.items()):
        current = Resource.objects.filter(kind="Node", name=node).values_list("status", flat=True).first()
        if current is None:
            continue
        desired = power.desired_limits(current)
        changed = {i: w for i, w in limits.items() if str(i) not in desired or desired[str(i)] != w}
        # A lift of a GPU nobody capped needs no write.
        changed = {i: w for i, w in changed.items() if w is not None or str(i) in desired}
        if changed:
            power.set_desired_limits(node, changed, source=source)


def _lift_all(cluster: str) -> int:
    """Lift every cap a powercap controller asked for on ``cluster``'s Nodes; how many."""
    lifted = 0
    for node, status in Resource.objects.filter(kind="Node", cluster=cluster).values_list("name", "status"):
        desired = power.desired_limits(status)
        by = (status.get("power") or {}).get("desiredBy") or ""
        capped = {int(i): None for i, w in desired.items() if w is not None}
        if capped and by.startswith(SOURCE_PREFIX):
            power.set_desired_limits(node, capped, source=by)
            lifted += len(capped)
    return lifted


def _summary(policy: str, budget: float, result: Pass) -> dict[str, Any]:
    draw = round(sum(g.draw_watts for g in result.gpus), 1)
    capped = [
        (g, result.limits[(g.node, g.index)])
        for g in result.gpus
        if result.limits[(g.node, g.index)] < g.max_watts
    ]
    capped.sort(key=lambda item: (item[0].priority, item[0].node, item[0].index))
    return {
        "policy": policy,
        "budgetWatts": budget,
        "drawWatts": draw,
        "headroomWatts": round(budget - draw, 1),
        "gpus": len(result.gpus),
        "cappedGpus": len(capped),
        "capWatts": round(sum(g.max_watts - limit for g, limit in capped), 1),
        "shortfallWatts": result.shortfall,
        "staleNodes": result.stale_nodes[:MAX_LISTED_CAPS],
        "capped": [
            {
                "node": g.node,
                "gpu": g.index,
                "limitWatts": limit,
                "maxWatts": g.max_watts,
                "owner": g.owner,
                "priority": g.priority,
            }  # fmt: skip
            for g, limit in capped[:MAX_LISTED_CAPS]
        ],
        "updatedAt": rfc3339(now()),
    }


def _condition(summary: dict[str, Any]) -> tuple[bool, str, str]:
    budget, draw = summary["budgetWatts"], summary["drawWatts"]
    figures = f"draw {draw:,.0f} W of {budget:,.0f} W budget"
    if summary["gpus"] == 0:
        return False, "NoTelemetry", "no GPU of this cluster has reported power; nothing to cap"
    if summary["shortfallWatts"] > 0:
        return (
            False,
            "BudgetUnmeetable",
            (
                f"{figures}: over budget by {summary['shortfallWatts']:,.0f} W even with every GPU at its "
                "board minimum; no new work is placed here until there is headroom (raise "
                "spec.powerBudgetWatts or stop work)"
            ),
        )
    if draw > budget:
        return False, "OverBudget", f"{figures}; {summary['cappedGpus']} GPUs capped"
    return True, "WithinBudget", f"{figures}; {summary['cappedGpus']} GPUs capped"


def _record_events(
    cluster: Resource, before: dict[str, Any], after: dict[str, Any], notes: list[str]
) -> None:
    old = {(c["node"], c["gpu"]): c["limitWatts"] for c in before.get("capped") or []}
    new = {(c["node"], c["gpu"]): c["limitWatts"] for c in after["capped"]}
    lowered = [k for k, w in new.items() if k not in old or w < old[k]]
    raised = [k for k, w in old.items() if k not in new or new[k] > w]
    why = ("; ".join(notes))[:500]
    draw = f"draw {after['drawWatts']:,.0f} W of {after['budgetWatts']:,.0f} W"
    source = (SOURCE_PREFIX + after["policy"])[:64]  # Event.source holds 64
    if lowered:
        message = f"{draw}: capped {len(lowered)} GPUs ({after['cappedGpus']} capped in all)"
        events.record(cluster, "PowerCapsApplied", message + (f": {why}" if why else ""), source=source)
    if raised:
        lifted = sum(1 for k in raised if k not in new)
        message = f"{draw}: raised {len(raised) - lifted} and lifted {lifted} GPU caps"
        events.record(cluster, "PowerCapsLifted", f"{message} ({after['cappedGpus']} capped)", source=source)


def reconcile(name: str) -> Pass | None:
    """One pass for Cluster ``name``; the Pass, or None when the Cluster caps nothing."""
    cluster = store.find("Cluster", name)
    if cluster is None or cluster.deletion_timestamp is not None:
        return None
    budget = cluster.spec.get("powerBudgetWatts")
    policy = (cluster.spec.get("policies") or {}).get("powercap")
    if not budget or not policy:
        _switch_off(name)
        return None
    try:
        plugin, params = policies.resolve("powercap", policy)
    except policies.PolicyProblem as exc:
        with transaction.atomic():
            row = store.get("Cluster", name, for_update=True)
            status = copy.deepcopy(row.status)
            if set_condition(status, CONDITION, False, "PolicyNotFound", f"{exc}; fix: {exc.fix}"):
                store.update_status(row, status)
        return None
    result = decide(name, float(budget), plugin, params)
    source = (SOURCE_PREFIX + plugin.name)[:64]  # Event.source and desiredBy hold 64
    _write_limits(name, source, result.decision.limits)
    after = _summary(policy, float(budget), result)
    with transaction.atomic():
        row = store.get("Cluster", name, for_update=True)
        status = copy.deepcopy(row.status)
        before = status.get("power") or {}
        status["power"] = after
        value, reason, message = _condition(after)
        was = copy.deepcopy(get_condition(status, CONDITION))  # set_condition changes it in place
        set_condition(status, CONDITION, value, reason, message)
        store.update_status(row, status)
        _record_events(row, before, after, result.decision.notes)
        if reason == "BudgetUnmeetable" and (was is None or was.get("reason") != reason):
            events.record(
                row,
                "PowerBudgetUnmeetable",
                message,
                type_="Warning",
                source=source,
            )
    if was is not None and was.get("reason") == "BudgetUnmeetable" and reason != "BudgetUnmeetable":
        from controlplane import dispatch

        dispatch.enqueue_pending()  # headroom again: owners waiting on it may place now
    return result


def _switch_off(name: str) -> None:
    """No budget or no policy: lift this controller's caps and drop its status."""
    _lift_all(name)
    with transaction.atomic():
        row = store.get("Cluster", name, for_update=True)
        status = copy.deepcopy(row.status)
        had = status.pop("power", None) is not None
        conditions = status.get("conditions") or []
        kept = [c for c in conditions if c.get("type") != CONDITION]
        if had or len(kept) != len(conditions):
            status["conditions"] = kept
            store.update_status(row, status)


def run(name: str) -> Pass | None:
    """:func:`reconcile` under the Cluster's powercap lease (skipped while another worker holds it)."""
    with leases.held(f"powercap:{name}", 60.0) as mine:
        if not mine:
            return None
        return reconcile(name)


def run_all() -> int:
    """A pass for every Cluster (the beat task); how many had a budget and a policy."""
    done = 0
    for name in Resource.objects.filter(kind="Cluster").values_list("name", flat=True).order_by("name"):
        try:
            done += run(name) is not None
        except Exception:  # one Cluster's bad data must not stop the others' caps
            log.exception("power cap pass for cluster %s failed", name)
    return done


# --- the scheduler's gate -----------------------------------------------------------------------


def blocked_clusters() -> dict[str, str]:
    """Clusters over budget even at minimum caps -> why; the owner controller places no new
    work on their nodes."""
    blocked = {}
    for name, status in Resource.objects.filter(kind="Cluster").values_list("name", "status"):
        condition = get_condition(status or {}, CONDITION)
        if condition and condition.get("status") == "False" and condition.get("reason") == "BudgetUnmeetable":
            blocked[name] = condition.get("message", "")
    return blocked


# --- telemetry arrival -------------------------------------------------------------------------

_capped_nodes: dict[str, str] = {}  # node -> its Cluster, for Clusters with a budget and a policy
_capped_read_at = -1e9
CAPPED_REFRESH_S = 5.0
_sent_here: dict[str, float] = {}  # Cluster -> when this process last sent its pass


def _cluster_of_capped(node: str) -> str | None:
    global _capped_nodes, _capped_read_at
    moment = time.monotonic()
    if moment - _capped_read_at > CAPPED_REFRESH_S:
        capped = {
            name
            for name, spec in Resource.objects.filter(kind="Cluster").values_list("name", "spec")
            if spec.get("powerBudgetWatts") and (spec.get("policies") or {}).get("powercap")
        }
        rows = Resource.objects.filter(kind="Node", cluster__in=capped).values_list("name", "cluster")
        _capped_nodes = dict(rows) if capped else {}
        _capped_read_at = moment
    return _capped_nodes.get(node)


def telemetry_arrived(node: str) -> bool:
    """A node's telemetry was stored: run its Cluster's pass soon, at most once per
    ``FLOTILLA_POWERCAP_MIN_INTERVAL`` (the lease lapses rather than being released)."""
    cluster = _cluster_of_capped(node)
    if cluster is None:
        return False
    # This process's own throttle first: heartbeats arrive many times a second and the
    # lease below is a database write.
    moment, interval = time.monotonic(), settings.FLOTILLA_POWERCAP_MIN_INTERVAL
    if moment - _sent_here.get(cluster, -1e9) < interval:
        return False
    _sent_here[cluster] = moment
    if leases.acquire(f"powercap-queued:{cluster}", settings.FLOTILLA_POWERCAP_MIN_INTERVAL) is None:
        return False
    from controlplane.celeryapp import app

    try:
        app.send_task(POWERCAP_TASK, args=[cluster])
    except Exception:  # the broker is down: beat's pass covers it
        log.exception("could not enqueue the power cap pass of cluster %s", cluster)
        return False
    return True
