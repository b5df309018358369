"""The torch training runtime, run as the agent runs it: a real subprocess, real torch, JSON lines.

Every run uses a tiny model on the CPU so the file stays fast on a 2-core machine.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from agents.runtimes.tokenizer import ByteTokenizer
from agents.runtimes.train.data import file_tokens, synthetic_tokens
from agents.runtimes.train.progress import EXIT_BAD_CONFIG, MAX_PROGRESS_LINES, progress_every, should_report

ROOT = Path(__file__).resolve().parent.parent
TINY = {"layers": 2, "hidden": 64, "heads": 2, "kvHeads": 1, "intermediate": 128, "maxSeqLen": 64}


def job(tmp_path: Path, **overrides: Any) -> Path:
    """A config file for the tiny model on synthetic data, with ``overrides`` applied on top."""
    config: dict[str, Any] = {
        "model": {"source": "builtin:tiny-llama", "config": dict(TINY)},
        "data": {"source": "builtin:synthetic"},
        "steps": 40,
        "batchSize": 8,
        "seqLen": 64,
        "learningRate": 2e-3,
        "seed": 7,
    }
    config.update(overrides)
    path = tmp_path / f"job-{len(list(tmp_path.glob('job-*.json')))}.json"
    path.write_text(json.dumps(config))
    return path


def start(config: Path) -> subprocess.Popen[str]:
    """The runtime as the agent starts it, single-threaded: a tiny model gains nothing from more
    threads, and OpenMP threads spinning against other processes on 2 cores slow a run tenfold."""
    return subprocess.Popen(
        [sys.executable, "-m", "agents.runtimes.train", "--config", str(config), "--device", "cpu"],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, list[dict[str, Any]], str]:
    """Exit code, the stdout events (every line must be JSON), and stderr."""
    out, err = process.communicate(timeout=120)
    return process.returncode, [json.loads(line) for line in out.splitlines()], err


def run(config: Path) -> tuple[int, list[dict[str, Any]], str]:
    return finish(start(config))


def of(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [event for event in events if event["event"] == kind]


def test_a_tiny_model_trained_on_synthetic_data_reports_progress_and_learns(tmp_path):
    code, events, err = run(job(tmp_path))
    assert code == 0, err
    assert [e["event"] for e in events[:1] + events[-1:]] == ["started", "succeeded"]
    assert events[0]["steps"] == 40 and events[0]["params"] > 0
    progress = of(events, "progress")
    steps = [e["step"] for e in progress]
    assert steps == list(range(1, 41))
    assert all(e["tokensPerSecond"] > 0 and e["etaSeconds"] >= 0 and e["steps"] == 40 for e in progress)
    assert progress[-1]["etaSeconds"] == 0
    first, last = progress[0]["loss"], progress[-1]["loss"]
    assert last < 0.8 * first, [round(e["loss"], 3) for e in progress]
    assert events[-1]["step"] == 40 and events[-1]["loss"] == last and events[-1]["seconds"] > 0
    assert "step 40/40" in err


def test_a_utf8_text_file_trains(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. ünïcödé too\n" * 40, encoding="utf-8")
    code, events, err = run(job(tmp_path, data={"source": f"path:{corpus}"}, steps=5, seqLen=32))
    assert code == 0, err
    assert of(events, "succeeded")[0]["step"] == 5


def test_a_little_endian_uint16_token_file_trains(tmp_path):
    tokens = tmp_path / "tokens.bin"
    tokens.write_bytes(struct.pack("<2000H", *[(i * 7) % 259 for i in range(2000)]))
    code, events, err = run(job(tmp_path, data={"source": f"path:{tokens}"}, steps=5, seqLen=32))
    assert code == 0, err
    assert [e["step"] for e in of(events, "progress")] == [1, 2, 3, 4, 5]


def test_an_out_of_range_token_id_fails_with_a_message_naming_the_file_and_offset(tmp_path):
    tokens = tmp_path / "bad.bin"
    tokens.write_bytes(struct.pack("<200H", *([1] * 100 + [300] + [2] * 99)))
    code, events, _ = run(job(tmp_path, data={"source": f"path:{tokens}"}, steps=5, seqLen=32))
    assert code == EXIT_BAD_CONFIG
    assert of(events, "started") == []
    [failed] = of(events, "failed")
    assert str(tokens) in failed["message"]
    assert "token id 300 at token offset 100 (byte offset 200)" in failed["message"]
    assert failed["field"] == "data.source"


@pytest.mark.parametrize(
    ("overrides", "field", "hint"),
    [
        ({"steps": 0}, "steps", "integer >= 1"),
        ({"data": {"source": "builtin:wikipedia"}}, "data.source", "builtin:synthetic"),
        ({"data": {"source": "s3://bucket/tokens"}}, "data.source", "path:/file"),
        ({"seqLen": 65}, "seqLen", "maxSeqLen 64"),
        ({"model": {"source": "builtin:tiny-llama", "config": {"heads": 3}}}, "model", "divisible"),
        ({"checkpoint": {"everySteps": 0}}, "checkpoint.everySteps", "integer >= 1"),
        ({"learningRate": -1}, "learningRate", "3e-4"),
        ({"resumeFrom": "checkpoints/step-00000100"}, "resumeFrom", "absolute path"),
        ({"checkpoint": {"plugin": "no-such-saver"}}, "checkpoint.plugin", "no checkpointer plugin"),
    ],
)
def test_a_bad_config_fails_with_an_event_naming_the_field_and_the_fix(tmp_path, overrides, field, hint):
    code, events, err = run(job(tmp_path, **overrides))
    assert code == EXIT_BAD_CONFIG, err
    [failed] = events
    assert failed["event"] == "failed" and failed["field"] == field
    assert failed["message"].startswith(f"{field}: ") and hint in failed["message"]


def test_a_checkpoint_section_naming_no_plugin_warns_that_nothing_is_saved(tmp_path):
    code, events, err = run(job(tmp_path, steps=2, checkpoint={"policy": "every-n", "everySteps": 50}))
    assert code == 0, err
    assert events[0]["event"] == "warning" and events[0]["message"].startswith("checkpoint:")
    assert "nothing is saved" in events[0]["message"] and "checkpoint.plugin" in events[0]["message"]
    assert [e["event"] for e in events[1:]] == ["started", "progress", "progress", "succeeded"]
    assert events[1]["resumedFrom"] == 0 and events[1]["checkpointer"] is None


def test_sigterm_mid_run_stops_after_the_current_step_with_exit_code_143(tmp_path):
    process = start(job(tmp_path, steps=1_000_000, batchSize=1, seqLen=16))
    assert process.stdout is not None
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        lines.append(json.loads(process.stdout.readline()))
        if lines[-1]["event"] == "progress":
            break
    assert lines[-1] == {**lines[-1], "event": "progress", "step": 1}
    process.send_signal(signal.SIGTERM)
    code, events, err = finish(process)
    assert code == 128 + signal.SIGTERM == 143, err
    stopped = events[-1]
    assert stopped["event"] == "stopped" and 1 <= stopped["step"] < 1_000_000
    assert stopped["signal"] == signal.SIGTERM
    assert of(events, "succeeded") == []


def test_two_cpu_runs_with_the_same_seed_report_identical_losses(tmp_path):
    config = job(tmp_path, steps=6)
    runs = [start(config), start(config)]
    losses = []
    for process in runs:
        code, events, err = finish(process)
        assert code == 0, err
        losses.append([e["loss"] for e in of(events, "progress")])
    assert len(losses[0]) == 6 and len(set(losses[0])) == 6
    assert losses[0] == losses[1]


def test_progress_lines_stay_near_the_cap_for_long_runs_but_keep_the_first_and_last_step():
    for steps in (1, 40, 200, 201, 1000, 123_457):
        every = progress_every(steps)
        reported = [s for s in range(1, steps + 1) if should_report(s, steps, every)]
        assert reported[0] == 1 and reported[-1] == steps
        assert len(reported) <= MAX_PROGRESS_LINES + 2
    assert progress_every(40) == 1


def test_token_files_decode_as_the_byte_tokenizer_and_little_endian_uint16(tmp_path):
    text = tmp_path / "a.txt"
    text.write_text("héllo", encoding="utf-8")
    assert file_tokens(text, 259).tokens.tolist() == ByteTokenizer().encode("héllo")
    binary = tmp_path / "a.bin"
    binary.write_bytes(bytes([0x02, 0x01, 0xFF, 0x00]))
    assert file_tokens(binary, 259).tokens.tolist() == [0x0102, 0x00FF]


def test_synthetic_data_follows_from_its_seed_and_uses_a_small_readable_alphabet():
    a, b, c = synthetic_tokens({}, 1), synthetic_tokens({}, 1), synthetic_tokens({}, 2)
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    assert a.tokens[0] == ByteTokenizer.BOS
    assert ByteTokenizer().decode(a.tokens[1:].tolist()).replace(" ", "").isalpha()
    assert len(set(a.tokens[1:].tolist())) <= 27
