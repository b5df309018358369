"""``flotilla describe trainingjob``'s checkpoint section: the last durable checkpoint, the
restore, the history as a table, the rejected ones and the step time, read from the
status the controller keeps (controlplane/controllers/checkpoints.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from common.timeutil import age

# Status keys shown here rather than in describe's YAML dump of the status.
SHOWN = ("checkpoints", "lastCheckpoint", "restoredFrom", "rejectedCheckpoints", "stepTimes")


def size(value: Any) -> str:
    """'512 B', '12.5 MB', '1.20 GB'; '-' when unknown."""
    if not isinstance(value, int | float):
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}" if unit == "GB" else f"{value / scale:.1f} {unit}"
    return f"{value:.0f} B"


def seconds(value: Any) -> str:
    return f"{value:.2f}s" if isinstance(value, int | float) else "-"


def ago(unix: Any, at: datetime | None = None) -> str:
    if not isinstance(unix, int | float):
        return "-"
    return age(datetime.fromtimestamp(unix, UTC), at)


def summary(record: dict[str, Any], at: datetime | None = None) -> str:
    """'step 100 at local, 12.5 MB in 0.84s, 3m ago: /path'."""
    text = (
        f"step {record.get('step', '?')} at {record.get('level', '?')}, {size(record.get('bytes'))} "
        f"in {seconds(record.get('seconds'))}, {ago(record.get('completedAt'), at)} ago"
    )
    return f"{text}: {record['path']}" if record.get("path") else text


def lines(status: dict[str, Any], table: Any, at: datetime | None = None) -> list[str]:
    """The section's lines (none when the job reported nothing); ``table`` is cli.output.table."""
    records = [r for r in status.get("checkpoints") or [] if isinstance(r, dict)]
    if not any(status.get(key) for key in SHOWN):
        return []
    last = status.get("lastCheckpoint")
    found = [f"Last checkpoint: {summary(last, at) if last else '<none durable yet>'}"]
    restored = status.get("restoredFrom")
    if restored:
        found.append(
            f"Restored from:   step {restored.get('step', '?')} at {restored.get('level', '?')} "
            f"in {seconds(restored.get('seconds'))}: {restored.get('path', '?')}"
        )
    found.append("Checkpoints:")
    if records:
        rows = [
            [
                str(r.get("step", "?")),
                str(r.get("level", "?")),
                size(r.get("bytes")),
                seconds(r.get("seconds")),
                ago(r.get("completedAt"), at),
                _outcome(r),
            ]
            for r in reversed(records)  # newest first, as events are
        ]
        found.append(_indent(table(rows, ["STEP", "LEVEL", "SIZE", "DURATION", "AGE", "RESULT"])))
    else:
        found.append("  <none>")
    rejected = [r for r in status.get("rejectedCheckpoints") or [] if isinstance(r, dict)]
    if rejected:
        found.append("Rejected checkpoints:")
        rows = [[str(r.get("path")), str(r.get("reason"))] for r in rejected]
        found.append(_indent(table(rows, ["PATH", "REASON"])))
    step_times = [p for p in status.get("stepTimes") or [] if isinstance(p, list) and len(p) == 2]
    if step_times:
        recent = [ms for _, ms in step_times[-10:]]
        found.append(
            f"Step time:       {step_times[-1][1]:.1f} ms at step {step_times[-1][0]} "
            f"(mean of the last {len(recent)} reports {sum(recent) / len(recent):.1f} ms)"
        )
    return found


def _outcome(record: dict[str, Any]) -> str:
    if record.get("skipped"):
        return f"skipped: {record.get('error') or 'busy'}"
    if record.get("error"):
        return f"failed: {record['error']}"
    return str(record.get("path") or "ok")


def _indent(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line for line in text.rstrip().splitlines())
