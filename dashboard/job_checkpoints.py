"""A training job's checkpoints on its page: the last durable one, the history, the restore,
and a chart of step time with the checkpoint steps marked.

The controller keeps all of it in the job's status (controlplane/controllers/checkpoints.py),
merged from its Workloads' reports, so it outlives them. The Workload's own report is
fresher while the job runs (the controller copies it on its next pass), so the step times
of a running job are read from there when it has more.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.utils.safestring import SafeString

from controlplane.controllers.checkpoints import is_durable
from controlplane.models import Resource
from dashboard.charts import Series, line_chart
from dashboard.common import number


def _when(unix: Any) -> datetime | None:
    value = number(unix)
    return datetime.fromtimestamp(value, UTC) if value is not None else None


def record_row(record: dict[str, Any]) -> dict[str, Any]:
    """One history row as the template shows it."""
    size = number(record.get("bytes"))
    return {
        "step": record.get("step"),
        "level": record.get("level") or "?",
        "megabytes": size / 1e6 if size is not None else None,
        "seconds": number(record.get("seconds")),
        "at": _when(record.get("completedAt")),
        "path": record.get("path") or "",
        "plugin": record.get("plugin") or "",
        "error": record.get("error") or "",
        "skipped": bool(record.get("skipped")),
        "durable": is_durable(record),
    }


def step_times(job: Resource, workloads: list[Resource]) -> list[tuple[float, float]]:
    """(step, ms) by step: the job's copy, with a running Workload's fresher report over it."""
    by_step: dict[float, float] = {}
    sources = [job.status.get("stepTimes") or []]
    sources += [w.status.get("stepTimes") or [] for w in workloads]
    for pairs in sources:
        for pair in pairs:
            if isinstance(pair, list) and len(pair) == 2:
                step, ms = number(pair[0]), number(pair[1])
                if step is not None and ms is not None:
                    by_step[step] = ms
    return sorted(by_step.items())


def step_time_chart(points: list[tuple[float, float]], records: list[dict[str, Any]]) -> SafeString:
    """Step time by step, a dashed line at each step a checkpoint reached a durable level."""
    marks = sorted(
        {
            (float(r["step"]), f"checkpoint at step {r['step']} ({r.get('level', '?')})")
            for r in records
            if is_durable(r) and number(r.get("step")) is not None
        }
    )
    return line_chart(
        [Series("step time", points)],
        title="Step time by step",
        unit="ms",
        height=200,
        marks=marks,
    )


def checkpoint_context(job: Resource, workloads: list[Resource]) -> dict[str, Any]:
    """What the Checkpoints card shows; ``policy`` None and nothing reported: the job saves none."""
    spec = job.spec.get("checkpoint") or {}
    status = job.status
    records = [r for r in status.get("checkpoints") or [] if isinstance(r, dict)]
    last = status.get("lastCheckpoint")
    points = step_times(job, workloads)
    restored = status.get("restoredFrom")
    return {
        "policy": spec.get("policy"),
        "every": spec.get("everySteps", 100),
        "resume_from": job.spec.get("resumeFrom"),
        "last": record_row(last) if isinstance(last, dict) else None,
        "rows": [record_row(r) for r in reversed(records)],  # newest first
        "restored": restored if isinstance(restored, dict) else None,
        "rejected": [r for r in status.get("rejectedCheckpoints") or [] if isinstance(r, dict)],
        "chart": step_time_chart(points, records),
        "step_points": len(points),
        "marked": len({r.get("step") for r in records if is_durable(r)}),
    }
