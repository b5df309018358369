"""The training runtime with a checkpointer: saves through the plugin, resumes exactly after kill -9.

Every run is a real subprocess with a tiny model on the CPU, as the agent starts it. The
uninterrupted run is made once (blocking) and every plugin's killed-and-resumed run must end
bit-identical to it, which also shows the plugins capture the same state.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from agents.runtimes.train.checkpointing import DIR_ENV, OWNER_ENV
from agents.runtimes.train.config import parse_config
from agents.runtimes.train.progress import EXIT_BAD_CONFIG
from plugins import checkpoint_files as files
from tests.test_train_runtime import ROOT, of

SMALL = {"layers": 1, "hidden": 32, "heads": 2, "kvHeads": 1, "intermediate": 64, "maxSeqLen": 64}
STEPS = 60
EVERY = 5
# A pipe this small holds about 20 event lines, so a runtime can never run more than that
# ahead of the test reading its events: a kill sent after reading step k lands before step k + 25.
PIPE_BYTES = 4096
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def config(
    tmp_path: Path,
    plugin: str | None = "blocking",
    params: dict[str, Any] | None = None,
    every: int = EVERY,
    **overrides: Any,
) -> Path:
    """A config file for the small model, checkpointing through ``plugin`` every ``every`` steps."""
    body: dict[str, Any] = {
        "model": {"source": "builtin:tiny-llama", "config": dict(SMALL)},
        "data": {"source": "builtin:synthetic"},
        "steps": STEPS,
        "batchSize": 4,
        "seqLen": 32,
        "learningRate": 2e-3,
        "seed": 11,
    }
    if plugin is not None:
        body["checkpoint"] = {"policy": plugin, "plugin": plugin, "params": params or {}, "everySteps": every}
    body.update(overrides)
    path = tmp_path / f"config-{len(list(tmp_path.glob('config-*.json')))}.json"
    path.write_text(json.dumps(body))
    return path


def start(config_path: Path, checkpoints: Path | None, err: Path) -> subprocess.Popen[str]:
    """The runtime as the agent starts it: the job's checkpoint directory and owner in its
    environment, one thread (see tests/test_train_runtime.start), stderr to a file."""
    env = {k: v for k, v in os.environ.items() if k not in (DIR_ENV, OWNER_ENV)}
    env["OMP_NUM_THREADS"] = "1"
    if checkpoints is not None:
        env[DIR_ENV] = str(checkpoints)
        env[OWNER_ENV] = f"TrainingJob/{checkpoints.name}"
    with open(err, "a", encoding="utf-8") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "agents.runtimes.train", "--config", str(config_path), "--device", "cpu"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    assert process.stdout is not None
    fcntl.fcntl(process.stdout.fileno(), F_SETPIPE_SZ, PIPE_BYTES)
    return process


def run(config_path: Path, checkpoints: Path | None) -> tuple[int, list[dict[str, Any]], str]:
    """Run to the end: exit code, the stdout events, stderr."""
    err = checkpoints.with_name(f"{checkpoints.name}.log") if checkpoints else config_path.with_suffix(".log")
    process = start(config_path, checkpoints, err)
    out, _ = process.communicate(timeout=180)
    return process.returncode, [json.loads(line) for line in out.splitlines()], err.read_text()


def kill_at(config_path: Path, checkpoints: Path, step: int) -> list[dict[str, Any]]:
    """Start a run and SIGKILL it once it reports ``step`` and at least one checkpoint; the
    events it wrote. The small pipe keeps the kill well before the last step."""
    process = start(config_path, checkpoints, checkpoints.with_name(f"{checkpoints.name}.log"))
    assert process.stdout is not None
    events: list[dict[str, Any]] = []
    try:
        for line in process.stdout:
            events.append(json.loads(line))
            reached = [e["step"] for e in of(events, "progress")]
            if reached and reached[-1] >= step and of(events, "checkpoint"):
                process.send_signal(signal.SIGKILL)
                break
    finally:
        process.kill()
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, f"the run ended by itself: {events[-3:]}"
    assert of(events, "succeeded") == []
    return events


def final_state(*levels: Path) -> files.Found:
    """The newest checkpoint over ``levels`` that verifies (the last step's, after a run)."""
    found = files.newest(list(levels), lambda path, why: pytest.fail(f"{path} rejected: {why}"))
    assert found is not None
    return found


def assert_identical(left: files.Found, right: files.Found) -> None:
    """Model and optimizer state of two checkpoints equal bit for bit (torch.equal per tensor)."""
    a, b = files.load(left), files.load(right)
    assert a.step == b.step
    assert a.model.keys() == b.model.keys()
    for name in a.model:
        assert torch.equal(a.model[name], b.model[name]), name
    for index, moments in a.optimizer["state"].items():
        for key, value in moments.items():
            assert torch.equal(value, b.optimizer["state"][index][key]), (index, key)
    assert torch.equal(a.rng["batches"], b.rng["batches"])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[files.Found, list[dict[str, Any]]]:
    """One run that never stops (blocking), its final checkpoint and its events."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    code, events, err = run(config(tmp), tmp / "job")
    assert code == 0, err
    return final_state(tmp / "job"), events


@pytest.mark.slow
def test_a_run_with_a_checkpointer_reports_each_checkpoint_and_the_stall_in_progress(uninterrupted):
    found, events = uninterrupted
    started = of(events, "started")[0]
    assert started["resumedFrom"] == 0 and started["checkpointer"] == "blocking"
    assert started["everySteps"] == EVERY
    assert of(events, "restored") == [] and of(events, "checkpointRejected") == []
    progress = of(events, "progress")
    assert all(e["stepMs"] > 0 and e["stallMs"] >= 0 for e in progress)
    # blocking saves inside the step: the steps that checkpoint are the ones that stall
    assert all(e["stallMs"] > 0 for e in progress if e["step"] % EVERY == 0)
    checkpoints = of(events, "checkpoint")
    assert [e["step"] for e in checkpoints] == list(range(EVERY, STEPS + 1, EVERY))
    for event in checkpoints:
        assert event["level"] == "local" and event["plugin"] == "blocking"
        assert event["path"].endswith(files.checkpoint_name(event["step"]))
        assert event["bytes"] > 0 and event["seconds"] > 0 and event["completedAt"] > 0
    assert events[-1]["event"] == "succeeded" and checkpoints[-1] in events[-3:]
    assert found.step == STEPS and found.manifest["owner"] == "TrainingJob/job"


@pytest.mark.slow
@pytest.mark.parametrize(("plugin", "seed"), [("blocking", 1), ("lazy-async", 2), ("memory-snapshot", 3)])
def test_a_run_killed_at_a_random_step_resumes_and_ends_bit_identical(tmp_path, uninterrupted, plugin, seed):
    shm = tmp_path / "shm"  # the memory level, never /dev/shm in tests
    params = {"path": str(shm)} if plugin == "memory-snapshot" else {}
    job = config(tmp_path, plugin, params)
    checkpoints = tmp_path / "job"
    kill_step = random.Random(seed).randrange(2 * EVERY, STEPS // 2)

    before = kill_at(job, checkpoints, kill_step)
    code, after, err = run(job, checkpoints)

    assert code == 0, err
    reached = of(before, "progress")[-1]["step"]
    [restored] = of(after, "restored")
    assert restored["plugin"] == plugin and restored["step"] % EVERY == 0
    assert EVERY <= restored["step"] <= reached
    assert restored["path"].endswith(files.checkpoint_name(restored["step"])) and restored["seconds"] > 0
    assert of(after, "started")[0]["resumedFrom"] == restored["step"]
    assert of(after, "progress")[0]["step"] == restored["step"] + 1
    assert of(after, "succeeded")[0]["step"] == STEPS
    last = of(after, "checkpoint")[-1]
    assert last["step"] == STEPS and after.index(last) < after.index(of(after, "succeeded")[0])
    assert_identical(final_state(shm / checkpoints.name, checkpoints), uninterrupted[0])


@pytest.mark.slow
def test_sigterm_waits_for_the_save_in_flight_and_reports_it_before_stopped(tmp_path):
    checkpoints = tmp_path / "job"
    process = start(config(tmp_path, "lazy-async", steps=2000), checkpoints, tmp_path / "job.log")
    assert process.stdout is not None
    events: list[dict[str, Any]] = []
    for line in process.stdout:
        events.append(json.loads(line))
        if events[-1]["event"] == "progress" and events[-1]["step"] >= 2 * EVERY:  # reported every 10
            process.send_signal(signal.SIGTERM)
            break
    out, _ = process.communicate(timeout=120)
    events += [json.loads(line) for line in out.splitlines()]

    assert process.returncode == 143, events[-3:]
    stopped = events[-1]
    assert stopped["event"] == "stopped"
    saved = {e["step"] for e in of(events, "checkpoint")}
    assert saved == set(range(EVERY, stopped["step"] + 1, EVERY))  # none left unreported


@pytest.mark.slow
def test_a_corrupt_newest_checkpoint_is_rejected_and_the_run_resumes_from_the_one_before(tmp_path):
    job = config(tmp_path, steps=12, every=4)
    checkpoints = tmp_path / "job"
    code, _, err = run(job, checkpoints)
    assert code == 0, err
    newest = checkpoints / files.checkpoint_name(12)
    original = files.load(files.verify(newest))
    shard = newest / "model.pt"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))

    code, events, err = run(job, checkpoints)

    assert code == 0, err
    [rejected] = of(events, "checkpointRejected")
    assert rejected["path"] == str(newest) and "checksum" in rejected["reason"]
    [restored] = of(events, "restored")
    assert restored["step"] == 8 and restored["path"] == str(checkpoints / files.checkpoint_name(8))
    assert events.index(rejected) < events.index(restored) < events.index(of(events, "started")[0])
    redone = files.load(files.verify(newest))  # written again by the resumed run, whole this time
    assert all(torch.equal(redone.model[name], original.model[name]) for name in original.model)


@pytest.mark.slow
def test_resume_from_starts_a_new_job_from_another_jobs_checkpoint_and_only_until_it_has_its_own(tmp_path):
    first = tmp_path / "first"
    code, _, err = run(config(tmp_path, steps=10), first)
    assert code == 0, err
    source = first / files.checkpoint_name(5)
    job = config(tmp_path, steps=15, resumeFrom=str(source))
    second = tmp_path / "second"

    code, events, err = run(job, second)

    assert code == 0, err
    [restored] = of(events, "restored")
    assert restored == {**restored, "step": 5, "path": str(source), "level": "local", "plugin": "blocking"}
    assert of(events, "started")[0]["resumedFrom"] == 5 and of(events, "progress")[0]["step"] == 6
    # it went on exactly as the first job had: step 10 of both is one and the same state
    assert_identical(
        files.verify(second / files.checkpoint_name(10)), files.verify(first / files.checkpoint_name(10))
    )
    code, again, err = run(job, second)
    assert code == 0, err
    assert of(again, "restored")[0]["path"] == str(second / files.checkpoint_name(15))


@pytest.mark.slow
def test_a_corrupt_resume_from_fails_with_a_config_error_naming_the_field(tmp_path):
    first = tmp_path / "first"
    code, _, err = run(config(tmp_path, steps=5), first)
    assert code == 0, err
    source = first / files.checkpoint_name(5)
    (source / "optimizer.pt").write_bytes(b"not the optimizer")

    code, events, err = run(config(tmp_path, steps=10, resumeFrom=str(source)), tmp_path / "second")

    assert code == EXIT_BAD_CONFIG, err
    [failed] = of(events, "failed")
    assert failed["field"] == "resumeFrom" and failed["message"].startswith("resumeFrom: ")
    assert str(source) in failed["message"] and "leave resumeFrom out" in failed["message"]
    assert of(events, "started") == []


@pytest.mark.slow
def test_a_checkpointer_without_a_checkpoint_directory_fails_before_training_saying_how_to_set_it(tmp_path):
    code, events, err = run(config(tmp_path), None)
    assert code == EXIT_BAD_CONFIG, err
    [failed] = events
    assert failed["field"] == "checkpoint" and DIR_ENV in failed["message"]
    assert "export" in failed["message"]


def test_a_resolved_checkpointer_and_resume_from_parse_without_warnings():
    parsed = parse_config(
        {
            "model": {"source": "builtin:tiny-llama"},
            "data": {"source": "builtin:synthetic"},
            "steps": 3,
            "batchSize": 1,
            "checkpoint": {"policy": "fast", "plugin": "lazy-async", "params": {"keep": 2}, "everySteps": 2},
            "resumeFrom": "/checkpoints/other/step-00000002",
        }
    )
    assert parsed.warnings == []
    assert parsed.checkpointer is not None and parsed.checkpointer.name == "lazy-async"
    assert parsed.resumeFrom == "/checkpoints/other/step-00000002"
