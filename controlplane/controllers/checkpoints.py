"""A TrainingJob's checkpoints, as its Workloads' agents report them (agents/supervisor.py).

The training runtime saves and restores on the node; its agent keeps what it said in the
Workload's status (``checkpoints``, ``restoredFrom``, ``rejectedCheckpoints``,
``stepTimes``). Each pass of the owner controller folds that into the job's status, so the
history outlives the Workload (deleted when the job finishes, replaced when its node is
lost) and an agent that restarted and forgot it:

- ``status.checkpoints``: the last :data:`CHECKPOINTS_KEPT` records, oldest first;
- ``status.lastCheckpoint``: the newest one at a durable level (any but ``memory``) that
  did not fail;
- ``status.restoredFrom``, ``status.rejectedCheckpoints``, ``status.stepTimes``;
- the ``Checkpointed`` condition, and one event per new record: ``Checkpointed``,
  ``CheckpointFailed``, ``CheckpointSkipped``, ``CheckpointRejected``, ``Resumed``.

A record is new when the job's status did not hold it before this pass, so a reconcile
that sees the same Workload status again records nothing. A job without a checkpoint policy
(and nothing reported) gets none of these.

Recovery itself needs nothing from here: a crashed training process is restarted by its
agent (BackOff) in the same Workload, which this controller keeps, and the runtime resumes
from its newest complete checkpoint in the job's directory on that node.
"""

from __future__ import annotations

import json
from typing import Any

from common.specs import CHECKPOINTS_KEPT, REJECTED_CHECKPOINTS_KEPT, STEP_TIMES_KEPT, TrainingJobSpec
from controlplane import events
from controlplane.conditions import set_condition
from controlplane.controllers.workload_config import SOURCE
from controlplane.models import Resource

MEMORY_LEVEL = "memory"  # the one level that does not survive the process
EVENTS_PER_PASS = 3  # at most this many Checkpointed events per pass; the last one counts the rest
RECORD_KEYS = ("step", "level", "path", "bytes", "seconds", "completedAt")


def _key(item: dict[str, Any]) -> str:
    return json.dumps(item, sort_keys=True, default=str)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def is_durable(record: dict[str, Any]) -> bool:
    """A completed checkpoint that survives its process (any level but memory)."""
    return record.get("level") != MEMORY_LEVEL and not record.get("error") and not record.get("skipped")


def merged_records(known: list[dict[str, Any]], workloads: list[Resource]) -> list[dict[str, Any]]:
    """The job's records and its Workloads' together, each once, oldest first, the last
    :data:`CHECKPOINTS_KEPT`."""
    found = {_key(r): r for r in known if isinstance(r, dict)}
    for workload in workloads:
        found.update({_key(r): r for r in workload.status.get("checkpoints") or [] if isinstance(r, dict)})
    ordered = sorted(found.values(), key=lambda r: (_number(r.get("completedAt")), _number(r.get("step"))))
    return ordered[-CHECKPOINTS_KEPT:]


def merged_step_times(known: list[Any], workloads: list[Resource]) -> list[list[float]]:
    """[step, stepMs] by step, the Workloads' latest value for a step repeated after a restart."""
    by_step: dict[int, float] = {}
    for pairs in [known, *(w.status.get("stepTimes") or [] for w in workloads)]:
        for pair in pairs:
            if isinstance(pair, list | tuple) and len(pair) == 2:
                by_step[int(_number(pair[0]))] = _number(pair[1])
    return [[step, ms] for step, ms in sorted(by_step.items())][-STEP_TIMES_KEPT:]


def describe(record: dict[str, Any]) -> str:
    """'step 100 at local, 12.5 MB in 0.84 s' (the Checkpointed condition's message)."""
    megabytes = _number(record.get("bytes")) / 1e6
    seconds = _number(record.get("seconds"))
    where = f"step {record.get('step', '?')} at {record.get('level', '?')}"
    return f"{where}, {megabytes:.1f} MB in {seconds:.2f} s"


def follow(owner: Resource, spec: Any, status: dict[str, Any], workloads: list[Resource]) -> None:
    """Fold the Workloads' checkpoint reports into ``status`` (in place); record the new ones."""
    if not isinstance(spec, TrainingJobSpec):
        return
    reported = any(
        w.status.get(k) for w in workloads for k in ("checkpoints", "restoredFrom", "rejectedCheckpoints")
    )
    if not spec.checkpoint.policy and not reported and not status.get("checkpoints"):
        return  # no checkpoint policy, nothing saved: nothing to say
    before = {_key(r) for r in status.get("checkpoints") or []}
    records = merged_records(status.get("checkpoints") or [], workloads)
    if records:
        status["checkpoints"] = records
    _record_new(owner, [r for r in records if _key(r) not in before])
    durable = [r for r in records if is_durable(r)]
    if durable:
        status["lastCheckpoint"] = {k: durable[-1][k] for k in RECORD_KEYS if k in durable[-1]}
    latest = status.get("lastCheckpoint")
    if latest:
        set_condition(status, "Checkpointed", True, "CheckpointSaved", describe(latest))
    else:
        asked = f"every {spec.checkpoint.everySteps} steps, policy {spec.checkpoint.policy or 'none'}"
        message = f"no durable checkpoint yet ({asked})"
        set_condition(status, "Checkpointed", False, "NoCheckpointYet", message)
    _follow_restores(owner, status, workloads)
    step_times = merged_step_times(status.get("stepTimes") or [], workloads)
    if step_times:
        status["stepTimes"] = step_times


def _record_new(owner: Resource, new: list[dict[str, Any]]) -> None:
    """One event per new record; Checkpointed for at most :data:`EVENTS_PER_PASS` of them."""
    saved = [r for r in new if is_durable(r)]
    shown = saved[-EVENTS_PER_PASS:]
    for n, record in enumerate(shown):
        earlier = len(saved) - len(shown) if n == 0 else 0
        more = f" ({earlier} earlier ones since the last report)" if earlier else ""
        where = f" to {record['path']}" if record.get("path") else ""
        events.record(owner, "Checkpointed", f"{describe(record)}{where}{more}", source=SOURCE)
    for record in new:
        level, error = record.get("level", "?"), record.get("error")
        if record.get("skipped"):
            # No step in the message: skips in a row count up on one event.
            message = f"a checkpoint was skipped at level {level}: {error or 'the previous one was busy'}"
            events.record(owner, "CheckpointSkipped", message, type_="Warning", source=SOURCE)
        elif error:
            message = f"step {record.get('step', '?')} at {level} failed: {error}"
            events.record(owner, "CheckpointFailed", message, type_="Warning", source=SOURCE)


def _follow_restores(owner: Resource, status: dict[str, Any], workloads: list[Resource]) -> None:
    """restoredFrom (the newest restore reported) and the rejected checkpoints, with an
    event for each restore and each rejection not seen before."""
    restores = [w.status["restoredFrom"] for w in workloads if isinstance(w.status.get("restoredFrom"), dict)]
    restored = max(restores, key=lambda r: _number(r.get("restoredAt")), default=None)
    previous = status.get("restoredFrom") or {}
    if (
        restored is not None
        and restored != previous
        and (_number(restored.get("restoredAt")) >= _number(previous.get("restoredAt")))
    ):
        status["restoredFrom"] = restored
        seconds = _number(restored.get("seconds"))
        message = (
            f"resumed from step {restored.get('step', '?')} ({restored.get('level', '?')}, "
            f"{restored.get('path', '?')}), loaded in {seconds:.2f} s"
        )
        events.record(owner, "Resumed", message, source=SOURCE)
    known = [r for r in status.get("rejectedCheckpoints") or [] if isinstance(r, dict)]
    seen = {_key(r) for r in known}
    for workload in workloads:
        for rejected in workload.status.get("rejectedCheckpoints") or []:
            if isinstance(rejected, dict) and _key(rejected) not in seen:
                seen.add(_key(rejected))
                known.append(rejected)
                message = f"{rejected.get('path')} was not loaded: {rejected.get('reason')}"
                events.record(owner, "CheckpointRejected", message, type_="Warning", source=SOURCE)
    if known:
        status["rejectedCheckpoints"] = known[-REJECTED_CHECKPOINTS_KEPT:]
