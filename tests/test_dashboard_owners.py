"""The owner pages' one badge scheme and one Workload row (dashboard.owners)."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.models import Resource
from dashboard.owners import condition_badge, condition_badges, workload_rows


def condition(kind: str, status: str, reason: str = "", message: str = "") -> dict[str, Any]:
    return {"type": kind, "status": status, "reason": reason, "message": message}


@pytest.mark.parametrize(
    ("item", "css", "text"),
    [
        (condition("Ready", "True", "AllReplicasReady"), "ok", "Ready"),
        (condition("Progressing", "True", "WaitingForReplicas"), "info", "Progressing"),
        (condition("Scheduled", "False", "Unschedulable"), "bad", "Scheduled: Unschedulable"),
        (condition("Scheduled", "False", "RuntimeUnsupported"), "warn", "Scheduled: RuntimeUnsupported"),
        (condition("Progressing", "False", "Converged"), "", "Progressing: Converged"),
        (condition("Ready", "False", "Completed"), "", "Ready: Completed"),
        (condition("Ready", "False", "Starting"), "warn", "Ready: Starting"),
        (condition("Ready", "Unknown"), "warn", "Ready: False"),
        (None, "", "Ready: unknown"),
    ],
)
def test_a_condition_is_green_blue_grey_red_or_amber_by_one_scheme(item, css, text):
    badge = condition_badge(item, "Ready" if item is None else item["type"])
    assert (badge["css"], badge["text"]) == (css, text)


def test_the_reason_can_stand_alone_and_any_refused_placement_be_red():
    refused = condition("Scheduled", "False", "RuntimeUnsupported")
    status = {"conditions": [condition("Ready", "False"), refused]}
    badges = condition_badges(status, ("Scheduled", "Ready", "Progressing"), named=False, any_refusal=True)
    assert [(b["css"], b["text"]) for b in badges] == [
        ("bad", "RuntimeUnsupported"),
        ("warn", "not Ready"),
        ("", "Progressing: unknown"),
    ]


def test_without_kinds_every_condition_is_shown_in_order_with_its_message_and_fields():
    placed = condition("Scheduled", "True", "Placed", "2 replicas")
    status = {"conditions": [placed, condition("Ready", "False")]}
    scheduled, ready = condition_badges(status)
    assert scheduled["title"] == "2 replicas" and scheduled["reason"] == "Placed"
    assert ready["text"] == "Ready: False"
    assert condition_badges({}) == []


def test_a_workload_row_says_where_it_runs_and_how_it_is_doing():
    workload = Resource(
        kind="Workload",
        name="pretrain-train-0",
        node_name="gpu-a",
        gpu_indices="0,1",
        spec={"role": "train"},
        status={
            "phase": "Running",
            "conditions": [condition("Ready", "False", "Starting", "loading")],
            "restarts": 2,
            "lastExitCode": 1,
            "lastLog": ["oom"],
            "progress": {"step": 40},
        },
    )
    (row,) = workload_rows([workload])
    assert row == {
        "name": "pretrain-train-0",
        "node": "gpu-a",
        "gpus": [0, 1],
        "role": "train",
        "phase": "Running",
        "ready": False,
        "reason": "Starting",
        "message": "loading",
        "endpoint": "",
        "restarts": 2,
        "exit_code": 1,
        "last_log": ["oom"],
        "step": 40,
    }
    (fresh,) = workload_rows([Resource(kind="Workload", name="w", spec={}, status={})])
    assert (fresh["phase"], fresh["ready"], fresh["gpus"], fresh["step"]) == ("Pending", False, [], None)
