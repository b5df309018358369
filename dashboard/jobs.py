"""Training jobs: a list with live progress, and a page per job with its loss curve.

Progress is what the training runtime reports (``step``, ``steps``, ``loss``,
``tokensPerSecond``, ``etaSeconds``): the agent copies it into the Workload's
``status.progress`` and the controller into the TrainingJob's. That is only the
latest point, so the loss curve is put together from what else keeps one
(see :func:`loss_history`). Both pages poll a fragment of themselves every 5 s
while the tab is visible; a finished job's fragments answer 286, which tells
htmx to stop polling.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import path
from django.utils.safestring import SafeString

from common.timeutil import now, parse_rfc3339
from controlplane.conditions import get_condition, is_true
from controlplane.controllers.owners import owned_workloads, workload_name
from controlplane.models import Event, Resource, WorkloadLog
from controlplane.telemetry import store as telemetry
from controlplane.telemetry.models import RawSample
from dashboard.charts import Series, line_chart
from dashboard.common import number, page_of, querystring
from dashboard.job_checkpoints import checkpoint_context
from dashboard.owners import condition_badges, workload_rows
from dashboard.roles import needs

KIND = "TrainingJob"
STOP_POLLING = 286  # htmx cancels an element's polling on this status (and still swaps)
EVENTS_SHOWN = 50
MAX_TELEMETRY_ROWS = 2000
# The runtime's human-readable progress line (agents.runtimes.train.progress.Reporter.progress).
PROGRESS_LINE = re.compile(r"\[train\] step (\d+)/\d+ loss (\S+)")


# --- progress -------------------------------------------------------------------------


@dataclass
class Progress:
    step: int
    steps: int | None
    loss: float | None
    tokens_per_second: float | None
    eta_seconds: float | None
    eta_source: str
    finished: bool

    @property
    def percent(self) -> float:
        if self.finished:
            return 100.0
        if not self.steps:
            return 0.0
        return max(0.0, min(100.0, 100.0 * self.step / self.steps))

    @property
    def eta(self) -> str:
        if self.finished:
            return "done"
        return duration(self.eta_seconds)


def duration(seconds: float | None) -> str:
    """'1h 02m', '3m 10s', '45s'; an em dash when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours >= 24:
        return f"{hours // 24}d {hours % 24:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def eta_from_rate(
    report: dict[str, Any], spec: dict[str, Any], steps: int | None
) -> tuple[float | None, str]:
    """Seconds left from the current token rate, and which figure it came from.

    The rate is tokens per second over the last reporting window; a step is
    ``batchSize × seqLen`` tokens. seqLen is known when the job sets
    ``spec.runtime.seqLen`` (or the runtime's ``started`` report is still the latest);
    otherwise the runtime's own ETA (its average pace since start) is shown.
    """
    step = int(number(report.get("step")) or 0)
    if steps is None:
        return None, ""
    if step >= steps:
        return 0.0, ""
    rate = number(report.get("tokensPerSecond"))
    seq_len = number((spec.get("runtime") or {}).get("seqLen")) or number(report.get("seqLen"))
    batch = number(report.get("batchSize")) or number(spec.get("batchSize"))
    if rate and seq_len and batch:
        return (steps - step) * batch * seq_len / rate, "rate"
    reported = number(report.get("etaSeconds"))
    return (reported, "runtime") if reported is not None else (None, "")


def progress_of(job: Resource, report: dict[str, Any] | None = None) -> Progress:
    """The job's progress from ``report`` (a Workload's, when fresher) or its own status."""
    report = report if report is not None else job.status.get("progress") or {}
    steps_value = number(report.get("steps")) or number(job.spec.get("steps"))
    steps = int(steps_value) if steps_value else None
    eta, source = eta_from_rate(report, job.spec, steps)
    return Progress(
        step=int(number(report.get("step")) or 0),
        steps=steps,
        loss=number(report.get("loss")),
        tokens_per_second=number(report.get("tokensPerSecond")),
        eta_seconds=eta,
        eta_source=source,
        finished=is_finished(job),
    )


def is_finished(job: Resource) -> bool:
    return is_true(job.status, "Succeeded")


# --- state and conditions --------------------------------------------------------------


def state_of(job: Resource) -> tuple[str, str]:
    """(badge class, word) summing a job up for the list."""
    status = job.status
    if is_finished(job):
        return "ok", "Succeeded"
    if job.deletion_timestamp is not None:
        return "warn", "Deleting"
    scheduled = get_condition(status, "Scheduled") or {}
    if scheduled.get("status") == "False":
        return "bad", "Unschedulable"
    ready = get_condition(status, "Ready") or {}
    if ready.get("status") == "True":
        return "info", "Training"
    if ready:
        return "warn", ready.get("reason") or "Starting"
    return "", "Pending"


def job_row(job: Resource) -> dict[str, Any]:
    css, word = state_of(job)
    return {
        "job": job,
        "progress": progress_of(job),
        "state_css": css,
        "state": word,
        "conditions": condition_badges(job.status),
    }


# --- loss history ------------------------------------------------------------------------


def _log_points(names: list[str], since: datetime) -> dict[int, float]:
    """(step, loss) from the runtime's progress lines in the Workloads' shipped logs.

    The logs keep every progress line of the run (up to FLOTILLA_LOG_BYTES per
    Workload) and outlive the Workload for a while, so a finished job keeps its
    curve; the line format is the runtime's ``[train] step S/N loss L ...``.
    """
    points: dict[int, float] = {}
    chunks = WorkloadLog.objects.filter(workload__in=names, at__gte=since).order_by("id")
    for text in chunks.values_list("text", flat=True).iterator():
        for match in PROGRESS_LINE.finditer(text):
            loss = _safe_float(match.group(2))
            if loss is not None:
                points[int(match.group(1))] = loss
    return points


def _safe_float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _telemetry_points(nodes: set[str], names: list[str], since: datetime) -> dict[int, float]:
    """(step, loss) from the runtime metrics agents send with each heartbeat.

    Only raw samples carry Workload metrics, and they are kept for
    FLOTILLA_TELEMETRY_RAW_SECONDS (an hour by default): minute roll-ups keep
    device metrics only. So this covers the last hour of a running job.
    """
    if not nodes:
        return {}
    since = max(since, now() - timedelta(seconds=telemetry.raw_seconds()))
    rows = RawSample.objects.filter(node__in=sorted(nodes), at__gte=since).order_by("-at")
    points: dict[int, float] = {}
    for workloads in reversed(list(rows.values_list("workloads", flat=True)[:MAX_TELEMETRY_ROWS])):
        for name in names:
            metrics = (workloads or {}).get(name) or {}
            step, loss = number(metrics.get("step")), number(metrics.get("loss"))
            if step is not None and loss is not None:
                points[int(step)] = loss
    return points


def workload_names(job: Resource, workloads: Iterable[Resource]) -> list[str]:
    """Names this job's Workloads have or had: the current ones, the last placements, and
    the first replica's, which a finished job (its Workloads removed) had too."""
    names = [w.name for w in workloads]
    names += [p.get("workload") for p in job.status.get("placements") or [] if p.get("workload")]
    names.append(workload_name(job, "train", 0))
    return sorted(set(names))


def loss_history(job: Resource, workloads: list[Resource]) -> tuple[list[tuple[float, float]], list[str]]:
    """The loss by step from every place that keeps some of it, and which places had any.

    Nothing keeps the whole history on purpose: status holds the latest point,
    telemetry the last hour, the logs up to their size cap. Later sources win for
    a step they share. A Workload restarted from step 0 repeats steps; the
    newer run's values replace the older ones.
    """
    names = workload_names(job, workloads)
    nodes = {w.node_name for w in workloads if w.node_name}
    nodes |= {p.get("node") for p in job.status.get("placements") or [] if p.get("node")}
    points: dict[int, float] = {}
    sources = []
    for label, found in (
        ("workload logs", _log_points(names, job.created_at)),
        ("telemetry", _telemetry_points(nodes, names, job.created_at)),
    ):
        if found:
            sources.append(label)
            points.update(found)
    latest = progress_of(job)
    if latest.step and latest.loss is not None and latest.step not in points:
        points[latest.step] = latest.loss
        sources.append("status")
    return sorted((float(step), loss) for step, loss in points.items()), sources


def loss_chart(points: list[tuple[float, float]]) -> SafeString:
    return line_chart([Series("loss", points)], title="Training loss by step", height=240)


# --- detail --------------------------------------------------------------------------


def job_events(job: Resource, names: list[str]) -> list[Event]:
    """The job's events and its Workloads', newest first."""
    wanted = Q(kind=KIND, name=job.name) | Q(kind="Workload", name__in=names)
    return list(Event.objects.filter(wanted).order_by("-last_seen", "-id")[:EVENTS_SHOWN])


def live_context(job: Resource, workloads: list[Resource]) -> dict[str, Any]:
    """What the polled fragment shows: progress, conditions, Workloads, events, checkpoints.

    A running job's progress is read from its Workload, which the agent updates
    directly; the job's own copy waits for the controller's next pass.
    """
    reports = [w.status["progress"] for w in workloads if w.status.get("progress")]
    css, word = state_of(job)
    conditions = condition_badges(job.status)
    for item in conditions:
        item["since"] = parse_rfc3339(item.get("lastTransitionTime"))
    return {
        "job": job,
        "progress": progress_of(job, reports[0] if reports and not is_finished(job) else None),
        "state_css": css,
        "state": word,
        "conditions": conditions,
        "workloads": workload_rows(workloads),
        "events": job_events(job, workload_names(job, workloads)),
        "checkpoint": checkpoint_context(job, workloads),
    }


def loss_context(job: Resource, workloads: list[Resource]) -> dict[str, Any]:
    points, sources = loss_history(job, workloads)
    return {"job": job, "chart": loss_chart(points), "points": len(points), "sources": sources}


def _find(name: str) -> Resource | None:
    return Resource.objects.filter(kind=KIND, name=name).first()


# --- views ---------------------------------------------------------------------------


def _list_context(request: HttpRequest) -> dict[str, Any]:
    page = page_of(request, Resource.objects.filter(kind=KIND).order_by("name"))
    return {
        "page": page,
        "rows": [job_row(job) for job in page.object_list],
        "pager_query": querystring(request, page=None),
        "live_query": request.GET.urlencode(),
    }


@needs("viewer")
def jobs(request: HttpRequest) -> HttpResponse:
    return render(request, "dashboard/jobs.html", _list_context(request))


@needs("viewer")
def jobs_live(request: HttpRequest) -> HttpResponse:
    return render(request, "dashboard/job_rows.html", _list_context(request))


@needs("viewer")
def job(request: HttpRequest, name: str) -> HttpResponse:
    found = _find(name)
    if found is None:
        return render(request, "dashboard/job_gone.html", {"name": name}, status=404)
    workloads = owned_workloads(found)
    runtime = {k: v for k, v in (found.spec.get("runtime") or {}).items() if v is not None}
    context = {
        **live_context(found, workloads),
        **loss_context(found, workloads),
        "spec": found.spec,
        "runtime": runtime,
    }
    return render(request, "dashboard/job.html", context)


@needs("viewer")
def job_live(request: HttpRequest, name: str) -> HttpResponse:
    found = _find(name)
    if found is None:
        return render(request, "dashboard/job_gone_note.html", {"name": name}, status=STOP_POLLING)
    context = live_context(found, owned_workloads(found))
    return render(request, "dashboard/job_live.html", context, status=_poll_status(found))


@needs("viewer")
def job_loss(request: HttpRequest, name: str) -> HttpResponse:
    """The loss chart on its own, polled less often: it reads logs and telemetry, not one row."""
    found = _find(name)
    if found is None:
        return HttpResponse("", status=STOP_POLLING)
    context = loss_context(found, owned_workloads(found))
    return render(request, "dashboard/job_loss.html", context, status=_poll_status(found))


def _poll_status(job: Resource) -> int:
    """A finished job changes no more: tell htmx to stop asking."""
    return STOP_POLLING if is_finished(job) else 200


urlpatterns = [
    path("jobs/", jobs, name="jobs"),
    path("jobs/live", jobs_live, name="jobs-live"),
    path("jobs/<str:name>/", job, name="job"),
    path("jobs/<str:name>/live", job_live, name="job-live"),
    path("jobs/<str:name>/loss", job_loss, name="job-loss"),
]
