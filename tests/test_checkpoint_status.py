"""Checkpoint recovery on the control-plane side: the agent's Workload status from the
runtime's events, the TrainingJob's status, condition and events from it, spec.resumeFrom,
and ``flotilla describe``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from agents.supervisor import Managed, Supervisor
from cli.output import describe
from controlplane import store
from controlplane.apply import apply
from controlplane.conditions import get_condition
from controlplane.controllers import owners
from controlplane.errors import Invalid
from controlplane.models import Event, Resource

API_VERSION = "flotilla.dev/v1"
NOW = 1_700_000_000.0


def training_job(name: str = "pretrain", **spec: Any) -> dict[str, Any]:
    body = {"model": {"source": "builtin:tiny-llama"}, "data": {"source": "builtin:synthetic"}, "steps": 100}
    body.update(spec)
    return {"apiVersion": API_VERSION, "kind": "TrainingJob", "metadata": {"name": name}, "spec": body}


def saved(step: int, level: str = "local", at: float | None = None, **extra: Any) -> dict[str, Any]:
    """A ``checkpoint`` event of the runtime (agents/runtimes/train/progress.py)."""
    return {
        "event": "checkpoint",
        "step": step,
        "level": level,
        "path": f"/ckpt/{level}/step-{step:08d}",
        "bytes": 12_500_000,
        "seconds": 0.5,
        "completedAt": at if at is not None else NOW + step,
        "plugin": "lazy-async",
        **extra,
    }


# --- the supervisor: Workload status from the runtime's events -------------------------


def managed_with_log(tmp_path: Path) -> tuple[Supervisor, Managed]:
    supervisor = Supervisor(tmp_path)
    document = {"metadata": {"name": "pretrain-train-0", "generation": 1}, "spec": {"runtime": "train"}}
    managed = Managed("pretrain-train-0", document, tmp_path / "pretrain-train-0.log")
    supervisor.workloads[managed.name] = managed
    return supervisor, managed


def write_events(managed: Managed, *events: dict[str, Any]) -> None:
    with open(managed.log_path, "a") as log:
        for event in events:
            log.write(json.dumps(event) + "\n")
        log.write("[train] a human line, not an event\n")


def test_the_workload_status_keeps_the_last_checkpoints_restores_rejections_and_step_times(tmp_path):
    supervisor, managed = managed_with_log(tmp_path)
    write_events(
        managed,
        {"event": "checkpointRejected", "path": "/ckpt/step-00000001", "reason": "bad checksum"},
        {"event": "restored", "step": 3, "level": "local", "path": "/ckpt/step-00000003", "seconds": 0.2},
        {"event": "started", "steps": 300, "params": 10, "resumedFrom": 3, "checkpointer": "lazy-async"},
        *[saved(step) for step in range(1, 26)],
        {"event": "checkpointFailed", "step": 26, "level": "durable", "error": "disk full", "skipped": False},
        *[
            {"event": "progress", "step": s, "steps": 300, "loss": 1.0, "stepMs": 50.0 + s}
            for s in range(250)
        ],
        *[
            {"event": "checkpointRejected", "path": f"/ckpt/bad-{n}", "reason": "no manifest"}
            for n in range(12)
        ],
    )
    supervisor._read_events(managed)
    status = supervisor.status_of(managed)

    records = status["checkpoints"]
    assert len(records) == 20
    assert [r["step"] for r in records] == [*range(7, 26), 26]  # oldest first
    assert records[0] == {k: v for k, v in saved(7).items() if k != "event"}
    assert records[-1]["error"] == "disk full" and records[-1]["skipped"] is False
    assert status["restoredFrom"]["step"] == 3 and status["restoredFrom"]["path"] == "/ckpt/step-00000003"
    assert len(status["rejectedCheckpoints"]) == 10
    assert status["rejectedCheckpoints"][-1] == {"path": "/ckpt/bad-11", "reason": "no manifest"}
    assert len(status["stepTimes"]) == 200
    assert status["stepTimes"][0] == [50, 100.0] and status["stepTimes"][-1] == [249, 299.0]


def test_a_restarted_workload_keeps_its_history_and_a_fresh_start_drops_the_old_restore(tmp_path):
    supervisor, managed = managed_with_log(tmp_path)
    write_events(managed, saved(5), {"event": "progress", "step": 6, "stepMs": 40.0})
    supervisor._read_events(managed)
    supervisor._exited(managed, -9, time.monotonic())  # kill -9: BackOff, the same Managed entry
    assert managed.phase == "BackOff"
    write_events(
        managed,
        {
            "event": "restored",
            "step": 5,
            "level": "local",
            "path": "/ckpt/local/step-00000005",
            "seconds": 0.1,
        },
        {"event": "started", "steps": 100, "params": 10, "resumedFrom": 5},
        {"event": "progress", "step": 6, "stepMs": 45.0},
        saved(10),
    )
    supervisor._read_events(managed)
    status = supervisor.status_of(managed)
    assert [r["step"] for r in status["checkpoints"]] == [5, 10]
    assert status["restoredFrom"]["step"] == 5
    assert status["stepTimes"] == [[6, 40.0], [6, 45.0]]
    assert status["restarts"] == 1

    write_events(managed, {"event": "started", "steps": 100, "params": 10, "resumedFrom": 0})
    supervisor._read_events(managed)
    assert "restoredFrom" not in supervisor.status_of(managed)


# --- the controller: the TrainingJob's status, condition and events ------------------------


def start(name: str = "pretrain", **spec: Any) -> Resource:
    apply([training_job(name, **spec)], actor="test")
    owners.reconcile("TrainingJob", name)
    return Resource.objects.get(kind="Workload", owner_ref=f"TrainingJob/{name}")


def report(workload: Resource, phase: str = "Running", restarts: int = 0, **status: Any) -> Resource:
    """As the agent does: the Workload's status, then the controller's pass over its job."""
    workload.refresh_from_db()
    ready = {"type": "Ready", "status": "True" if phase == "Running" else "False", "reason": "Training"}
    store.update_status(workload, {"phase": phase, "restarts": restarts, "conditions": [ready], **status})
    owner = workload.spec["owner"]["name"]
    owners.reconcile("TrainingJob", owner)
    return store.get("TrainingJob", owner)


def record(step: int, level: str = "local", **extra: Any) -> dict[str, Any]:
    return {k: v for k, v in saved(step, level, **extra).items() if k != "event"}


def events_of(name: str, *reasons: str) -> list[tuple[str, str]]:
    rows = Event.objects.filter(kind="TrainingJob", name=name).order_by("id")
    return [(r, m) for r, m in rows.values_list("reason", "message") if not reasons or r in reasons]


CHECKPOINT_REASONS = (
    "Checkpointed",
    "CheckpointFailed",
    "CheckpointSkipped",
    "CheckpointRejected",
    "Resumed",
)


@pytest.mark.django_db
def test_the_job_gets_the_history_the_last_durable_checkpoint_and_the_condition(add_node):
    add_node("gpu-a", gpus=2)
    workload = start(checkpoint={"policy": "lazy-async", "everySteps": 5})
    job = store.get("TrainingJob", "pretrain")
    condition = get_condition(job.status, "Checkpointed")
    assert condition["status"] == "False" and condition["reason"] == "NoCheckpointYet"

    history = [
        record(5),
        record(10, "memory"),
        record(10, "local", error="disk full"),
        record(10, "local", skipped=True, error="busy"),
    ]
    job = report(workload, checkpoints=history, stepTimes=[[1, 50.0], [5, 90.0], [6, 51.0]])
    assert job.status["checkpoints"] == history
    assert job.status["lastCheckpoint"] == {k: v for k, v in record(5).items() if k != "plugin"}
    assert job.status["stepTimes"] == [[1, 50.0], [5, 90.0], [6, 51.0]]
    condition = get_condition(job.status, "Checkpointed")
    assert (condition["status"], condition["reason"]) == ("True", "CheckpointSaved")
    assert condition["message"] == "step 5 at local, 12.5 MB in 0.50 s"
    assert events_of("pretrain", *CHECKPOINT_REASONS) == [
        ("Checkpointed", "step 5 at local, 12.5 MB in 0.50 s to /ckpt/local/step-00000005"),
        ("CheckpointFailed", "step 10 at local failed: disk full"),
        ("CheckpointSkipped", "a checkpoint was skipped at level local: busy"),
    ]
    assert "CheckpointingNotAvailable" not in [reason for reason, _ in events_of("pretrain")]


@pytest.mark.django_db
def test_each_checkpoint_restore_and_rejection_is_recorded_once(add_node):
    add_node("gpu-a", gpus=2)
    workload = start(checkpoint={"policy": "lazy-async", "everySteps": 5})
    restored = {"step": 5, "level": "local", "path": "/ckpt/local/step-00000005", "seconds": 0.25}
    rejected = [{"path": "/ckpt/local/step-00000010", "reason": "shard model.pt: sha256 mismatch"}]
    extra = {"restoredFrom": {**restored, "restoredAt": NOW}, "rejectedCheckpoints": rejected}
    report(workload, checkpoints=[record(5)], **extra)
    owners.reconcile("TrainingJob", "pretrain")  # again, with nothing new
    report(workload, checkpoints=[record(5)], **extra)
    assert [reason for reason, _ in events_of("pretrain", *CHECKPOINT_REASONS)] == [
        "Checkpointed",
        "Resumed",
        "CheckpointRejected",
    ]
    job = report(workload, checkpoints=[record(5), record(10)], **extra)
    assert [reason for reason, _ in events_of("pretrain", *CHECKPOINT_REASONS)][-1] == "Checkpointed"
    assert len(events_of("pretrain", "Checkpointed")) == 2
    assert job.status["lastCheckpoint"]["step"] == 10
    assert job.status["restoredFrom"]["path"] == restored["path"]
    assert job.status["rejectedCheckpoints"] == rejected
    assert events_of("pretrain", "Resumed") == [
        ("Resumed", "resumed from step 5 (local, /ckpt/local/step-00000005), loaded in 0.25 s")
    ]

    # A second restore from the same checkpoint (killed again before the next one) counts again.
    again = {**extra, "restoredFrom": {**restored, "restoredAt": NOW + 60}}
    report(workload, restarts=2, checkpoints=[record(5), record(10)], **again)
    assert Event.objects.get(kind="TrainingJob", name="pretrain", reason="Resumed").count == 2


@pytest.mark.django_db
def test_a_crashed_training_workload_is_kept_for_its_agent_to_restart_not_recreated(add_node):
    add_node("gpu-a", gpus=2)
    workload = start(checkpoint={"policy": "lazy-async", "everySteps": 5})
    job = report(workload, phase="BackOff", restarts=1, checkpoints=[record(5)], lastExitCode=-9)
    (kept,) = Resource.objects.filter(kind="Workload", owner_ref="TrainingJob/pretrain")
    assert (kept.uid, kept.deletion_timestamp) == (workload.uid, None)
    assert kept.spec == workload.spec and kept.generation == workload.generation  # not reconfigured
    assert [reason for reason, _ in events_of("pretrain")].count("Scheduled") == 1
    assert job.status["lastCheckpoint"]["step"] == 5


@pytest.mark.django_db
def test_the_history_outlives_the_workload_of_a_finished_job(add_node):
    add_node("gpu-a", gpus=2)
    workload = start(checkpoint={"policy": "blocking", "everySteps": 50})
    job = report(
        workload,
        phase="Succeeded",
        checkpoints=[record(50), record(100)],
        stepTimes=[[100, 50.0]],
        progress={"step": 100, "steps": 100},
    )
    assert get_condition(job.status, "Succeeded")["status"] == "True"
    owners.reconcile("TrainingJob", "pretrain")
    job = store.get("TrainingJob", "pretrain")
    assert [r["step"] for r in job.status["checkpoints"]] == [50, 100]
    assert job.status["lastCheckpoint"]["step"] == 100
    assert job.status["stepTimes"] == [[100, 50.0]]


@pytest.mark.django_db
def test_a_job_without_a_checkpoint_policy_says_nothing_about_checkpoints(add_node):
    add_node("gpu-a", gpus=2)
    workload = start(checkpoint={"everySteps": 5})
    job = report(workload, progress={"step": 3, "steps": 100})
    assert get_condition(job.status, "Checkpointed") is None
    assert "checkpoints" not in job.status and "lastCheckpoint" not in job.status
    assert events_of("pretrain", *CHECKPOINT_REASONS, "CheckpointingNotAvailable") == []


# --- spec.resumeFrom -------------------------------------------------------------------------


@pytest.mark.django_db
def test_resume_from_must_be_an_absolute_path_and_the_error_names_the_field():
    with pytest.raises(Invalid) as caught:
        apply([training_job(resumeFrom="ckpt/step-00000100")], actor="test")
    (problem,) = caught.value.details
    assert problem["field"] == "spec.resumeFrom"
    assert "absolute path to a checkpoint directory" in problem["message"]
    with pytest.raises(Invalid) as caught:
        apply([training_job(resumeFrom="/" + "a" * 1024)], actor="test")
    assert caught.value.details[0]["field"] == "spec.resumeFrom"


@pytest.mark.django_db
def test_resume_from_reaches_the_train_workloads_config(add_node):
    add_node("gpu-a", gpus=2)
    workload = start(resumeFrom="/data/ckpt/base/step-00000100", checkpoint={"policy": "blocking"})
    assert workload.spec["config"]["resumeFrom"] == "/data/ckpt/base/step-00000100"
    assert workload.spec["config"]["checkpoint"]["plugin"] == "blocking"
    assert "resumeFrom" not in start("plain").spec["config"]


# --- flotilla describe trainingjob -----------------------------------------------------------


def test_describe_shows_the_last_durable_checkpoint_and_the_history_newest_first():
    document = {
        "kind": "TrainingJob",
        "metadata": {"name": "pretrain", "creationTimestamp": "2024-01-01T00:00:00Z", "generation": 1},
        "spec": {"steps": 100},
        "status": {
            "progress": {"step": 12},
            "checkpoints": [record(5), record(10, "memory"), record(10, error="disk full")],
            "lastCheckpoint": record(5),
            "restoredFrom": {
                "step": 5,
                "level": "local",
                "path": "/ckpt/local/step-00000005",
                "seconds": 0.2,
            },
            "rejectedCheckpoints": [{"path": "/ckpt/bad", "reason": "no manifest"}],
            "stepTimes": [[10, 50.0], [12, 70.0]],
        },
    }
    text = describe(document, [])
    assert "Last checkpoint: step 5 at local, 12.5 MB in 0.50s," in text
    assert "/ckpt/local/step-00000005" in text
    assert "Restored from:   step 5 at local in 0.20s: /ckpt/local/step-00000005" in text
    lines = text.splitlines()
    header = next(n for n, line in enumerate(lines) if "STEP" in line and "LEVEL" in line)
    for word in ("SIZE", "DURATION", "AGE"):
        assert word in lines[header]
    assert lines[header + 1].split()[:2] == ["10", "local"] and "failed: disk full" in lines[header + 1]
    assert lines[header + 2].split()[:4] == ["10", "memory", "12.5", "MB"]
    assert lines[header + 3].split()[:2] == ["5", "local"]
    assert "/ckpt/bad" in text and "no manifest" in text
    assert "Step time:       70.0 ms at step 12" in text
    assert "stepTimes" not in text  # shown as the summary, not dumped
    assert "step: 12" in text  # the rest of the status is still dumped
