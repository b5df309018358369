"""The training job page's Checkpoints card: the last durable checkpoint, the history, the
restore, and the step-time chart with the checkpoint steps marked."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client

from controlplane import store
from controlplane.apply import apply
from controlplane.controllers import owners
from controlplane.models import Resource
from dashboard.charts import Series, line_chart
from tests.conftest import logged_in

pytestmark = pytest.mark.django_db

API_VERSION = "flotilla.dev/v1"
NOW = 1_700_000_000.0


@pytest.fixture
def viewer_client() -> Client:
    return logged_in("viewer1", "viewer")


def start_job(name: str, **spec: Any) -> Resource:
    body = {"model": {"source": "builtin:tiny-llama"}, "data": {"source": "builtin:synthetic"}, "steps": 100}
    document = {"apiVersion": API_VERSION, "kind": "TrainingJob", "metadata": {"name": name}, "spec": body}
    body.update(spec)
    apply([document], actor="test")
    owners.reconcile("TrainingJob", name)
    return Resource.objects.get(kind="Workload", owner_ref=f"TrainingJob/{name}")


def record(step: int, level: str = "local", **extra: Any) -> dict[str, Any]:
    path = f"/ckpt/{level}/step-{step:08d}"
    return {"step": step, "level": level, "path": path, "bytes": 25_000_000, "seconds": 1.25, **extra}


def report(workload: Resource, **status: Any) -> None:
    ready = {"type": "Ready", "status": "True", "reason": "Training"}
    store.update_status(workload, {"phase": "Running", "conditions": [ready], **status})
    owners.reconcile("TrainingJob", workload.spec["owner"]["name"])


def checkpoint_card(html: str) -> str:
    start = html.index('<div id="job-checkpoints"')
    return html[start : html.index("<h2>Spec</h2>", start)]


def test_the_job_page_shows_the_last_durable_checkpoint_the_history_and_marked_step_times(
    viewer_client: Client, add_node: Any
) -> None:
    add_node("gpu-a", gpus=2)
    workload = start_job("pretrain", checkpoint={"policy": "lazy-async", "everySteps": 10})
    report(
        workload,
        progress={"step": 25, "steps": 100, "loss": 2.0},
        checkpoints=[
            record(10, completedAt=NOW),
            record(20, "memory", completedAt=NOW + 5),
            record(20, completedAt=NOW + 6),
            record(25, error="disk full", completedAt=NOW + 7),
        ],
        restoredFrom={"step": 10, "level": "local", "path": "/ckpt/local/step-00000010", "seconds": 0.4},
        rejectedCheckpoints=[{"path": "/ckpt/local/step-00000015", "reason": "manifest missing"}],
        stepTimes=[[s, 50.0 + (30 if s in (10, 20) else 0)] for s in range(1, 26)],
    )
    html = viewer_client.get("/jobs/pretrain/").content.decode()
    card = checkpoint_card(html)
    last = card[card.index('id="last-checkpoint"') : card.index("</dl>")]
    assert "step 20</b> at <code>local</code>, 25.0 MB in 1.25 s" in last
    assert "/ckpt/local/step-00000020" in last
    assert "<code>lazy-async</code>, every 10 steps" in card
    assert "step 10 from <code>local</code> in 0.40 s" in card
    assert re.findall(r'data-checkpoint-step="(\d+)"', card) == ["25", "20", "20", "10"]  # newest first
    assert (
        "disk full" in card and "in memory" in card and card.count('<span class="badge ok">saved</span>') == 2
    )
    assert "/ckpt/local/step-00000015" in card and "manifest missing" in card

    chart = card[card.index('<svg class="chart"') : card.index("</svg>")]
    assert "Step time by step (ms)" in chart
    points = re.search(r'<polyline class="series" stroke="[^"]+" points="([^"]+)"', chart)
    assert points is not None and len(points.group(1).split()) == 25
    marks = re.findall(r'<line class="mark"[^>]*><title>([^<]+)</title>', chart)
    assert marks == ["checkpoint at step 10 (local)", "checkpoint at step 20 (local)"]
    assert "25 points" in card and "2 checkpoint steps" in card
    assert "CheckpointingNotAvailable" not in html

    # The polled fragment carries the card too, out of band.
    live = viewer_client.get("/jobs/pretrain/live").content.decode()
    assert '<div id="job-checkpoints" hx-swap-oob="true">' in live
    assert 'data-checkpoint-step="25"' in live and '<line class="mark"' in live


def test_a_job_with_a_policy_and_no_checkpoint_yet_says_when_the_first_comes(
    viewer_client: Client, add_node: Any
) -> None:
    add_node("gpu-a", gpus=2)
    start_job(
        "fresh", checkpoint={"policy": "blocking", "everySteps": 50}, resumeFrom="/data/base/step-00000100"
    )
    card = checkpoint_card(viewer_client.get("/jobs/fresh/").content.decode())
    assert "none yet" in card
    assert "No checkpoint yet: the first comes at step 50." in card
    assert "<code>/data/base/step-00000100</code>" in card
    assert "Step time by step (ms): no data for this period yet." in card


def test_chart_marks_outside_the_plotted_steps_are_left_out() -> None:
    chart = str(line_chart([Series("ms", [(1, 10.0), (5, 12.0)])], marks=[(3, "a <b>"), (9, "outside")]))
    assert chart.count('<line class="mark"') == 1
    assert "<title>a &lt;b&gt;</title>" in chart
