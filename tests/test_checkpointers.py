"""The checkpointer kind's built-ins (blocking, lazy-async, memory-snapshot) and the format
they share: atomic writes, manifests that must verify, retention, bounded host memory, the
lazy copy's guarantee, and parameters refused at apply time naming the field.

Everything runs on the CPU in ``tmp_path`` with a tiny model; the memory level is always given
a ``path`` under ``tmp_path``, never /dev/shm.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from plugins import checkpoint_files as files
from plugins import checkpoint_snapshot, manager
from plugins.checkpointers import Blocking, LazyAsync, MemorySnapshot
from plugins.types import CheckpointTarget, TrainingState

ROOT = Path(__file__).resolve().parent.parent
API_VERSION = "flotilla.dev/v1"


@pytest.fixture(autouse=True)
def _no_snapshotter_outlives_a_test():
    yield
    checkpoint_snapshot.close_all()


# --- a tiny training run to checkpoint --------------------------------------------------------


def trained(steps: int = 2, seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(3, 4)).pow(2).sum().backward()
        optimizer.step()
    return model, optimizer


def state_at(step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> TrainingState:
    return TrainingState(
        step=step,
        model=model.state_dict(),
        optimizer=optimizer.state_dict(),
        scheduler={"last_epoch": step},
        rng={"torch": torch.get_rng_state()},
        data={"position": step * 3, "epoch": 0},
    )


def a_state(step: int, seed: int = 0) -> TrainingState:
    return state_at(step, *trained(seed=seed))


def assert_same(a: Any, b: Any) -> None:
    """Equal all the way down, tensors by torch.equal (values, shape and dtype)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b


def assert_restored(restored: TrainingState | None, saved: TrainingState) -> None:
    assert restored is not None
    assert restored.step == saved.step
    for part in ("model", "optimizer", "scheduler", "rng", "data"):
        assert_same(getattr(restored, part), getattr(saved, part))


def target_in(tmp_path: Path, durable: bool = False) -> CheckpointTarget:
    return CheckpointTarget(
        owner="TrainingJob/t",
        local_dir=str(tmp_path / "local" / "t-0123abcd"),
        durable_dir=str(tmp_path / "durable" / "t-0123abcd") if durable else None,
    )


def steps_in(level: Path) -> list[int]:
    return sorted(files.step_of(p) for p in files.listing(level))


def no_notes(path: Path, why: str) -> None:
    raise AssertionError(f"{path} was skipped: {why}")


# --- atomic writes ----------------------------------------------------------------------------


def test_a_writer_that_fails_mid_write_leaves_no_checkpoint_and_removes_its_staging(tmp_path, monkeypatch):
    level = tmp_path / "level"
    files.write(level, a_state(1), {"level": "local"})
    real_save = torch.save

    def failing_save(part: Any, handle: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(part, dict) and "param_groups" in part:  # the optimizer shard, after the model's
            raise OSError("disk full")
        real_save(part, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        files.write(level, a_state(2), {"level": "local"})

    assert steps_in(level) == [1]
    assert sorted(p.name for p in level.iterdir()) == ["step-00000001"]
    assert files.newest([level], no_notes).step == 1


KILLED_WRITER = """
import sys, time
from pathlib import Path
import torch
from plugins import checkpoint_files as files
from plugins.types import TrainingState

real_write = files._HashingWriter.write
def stalled_write(self, data):
    out = real_write(self, data)
    if self.size > 1024:
        print("writing", flush=True)
        time.sleep(600)
    return out
files._HashingWriter.write = stalled_write
state = TrainingState(step=2, model={"w": torch.arange(4096, dtype=torch.float32)})
files.write(Path(sys.argv[1]), state, {"level": "local"})
"""


def test_a_writer_killed_with_sigkill_mid_write_leaves_only_a_staging_dir(tmp_path):
    level = tmp_path / "level"
    files.write(level, a_state(1), {"level": "local"})
    writer = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(level)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "writing", writer.stderr.read()
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)

    (staging,) = [p for p in level.iterdir() if p.name != "step-00000001"]
    assert staging.name.startswith(".step-00000002.tmp-")
    assert steps_in(level) == [1]
    assert files.newest([level], no_notes).step == 1
    assert files.clear_staging(level) == [staging]
    assert sorted(p.name for p in level.iterdir()) == ["step-00000001"]


def test_clear_staging_leaves_a_staging_dir_this_process_is_still_writing(tmp_path, monkeypatch):
    level = tmp_path / "level"
    started, release = threading.Event(), threading.Event()
    real_write = files._write_manifest

    def slow_manifest(*args: Any) -> None:
        started.set()
        release.wait(10)
        real_write(*args)

    monkeypatch.setattr(files, "_write_manifest", slow_manifest)
    writer = threading.Thread(target=files.write, args=(level, a_state(3), {"level": "local"}))
    writer.start()
    assert started.wait(10)

    assert files.clear_staging(level) == []
    release.set()
    writer.join(10)
    assert files.newest([level], no_notes).step == 3


# --- manifest verification --------------------------------------------------------------------


def two_checkpoints(level: Path) -> Path:
    """Steps 1 and 2 under ``level``; the path of step 2, for the test to damage."""
    files.write(level, a_state(1), {"level": "local"})
    return Path(files.write(level, a_state(2, seed=1), {"level": "local"}).path)


def damage_manifest(path: Path, change: Any) -> None:
    manifest = json.loads((path / files.MANIFEST).read_text())
    change(manifest)
    (path / files.MANIFEST).write_text(json.dumps(manifest))


def flip_a_byte(path: Path) -> None:
    shard = path / "model.pt"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    shard = path / "optimizer.pt"
    shard.write_bytes(shard.read_bytes()[:-10])


def rename_to_escape(manifest: dict[str, Any]) -> None:
    manifest["shards"][0]["file"] = "../step-00000001/" + manifest["shards"][0]["file"]


DAMAGE = {
    "missing manifest": (lambda path: (path / files.MANIFEST).unlink(), "no manifest.json"),
    "truncated shard": (truncate, "bytes, the manifest says"),
    "flipped byte": (flip_a_byte, "checksum does not match"),
    "wrong step": (lambda path: damage_manifest(path, lambda m: m.update(step=7)), "says step 7"),
    "a ../ shard": (lambda path: damage_manifest(path, rename_to_escape), "../step-00000001/"),
    "not json": (lambda path: (path / files.MANIFEST).write_text("{"), "unreadable"),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_newest_skips_a_damaged_checkpoint_saying_why_and_returns_the_previous_good_one(tmp_path, damage):
    level = tmp_path / "level"
    damaged = two_checkpoints(level)
    harm, reason = DAMAGE[damage]
    harm(damaged)
    notes: list[tuple[Path, str]] = []

    found = files.newest([level], lambda path, why: notes.append((path, why)))

    assert found is not None and found.step == 1
    assert [path for path, _ in notes] == [damaged]
    assert reason in notes[0][1]


def test_restore_names_the_skipped_checkpoint_on_the_target_and_loads_the_previous_one(tmp_path):
    target = target_in(tmp_path)
    params = Blocking.Params()
    first = a_state(1)
    Blocking().save(state=first, target=target, params=params)
    second = Blocking().save(state=a_state(2, seed=1), target=target, params=params)
    flip_a_byte(Path(second.records()[0].path))

    assert_restored(Blocking().restore(target=target, params=params), first)
    ((path, why),) = target.rejected
    assert path.endswith("step-00000002") and "checksum" in why


def test_a_checkpoint_that_verifies_but_does_not_load_is_skipped_too(tmp_path, monkeypatch):
    target = target_in(tmp_path)
    params = Blocking.Params()
    Blocking().save(state=a_state(1), target=target, params=params)
    Blocking().save(state=a_state(2), target=target, params=params)
    real_load = files.load

    def load(found: files.Found, started: float | None = None) -> TrainingState:
        if found.step == 2:
            raise RuntimeError("weights_only refused it")
        return real_load(found, started)

    monkeypatch.setattr(files, "load", load)

    assert Blocking().restore(target=target, params=params).step == 1
    assert "unloadable" in target.rejected[0][1]


# --- each plugin restores exactly what it saved ------------------------------------------------


def plugin_cases(tmp_path: Path) -> dict[str, tuple[Any, Any]]:
    return {
        "blocking": (Blocking(), Blocking.Params()),
        "lazy-async": (LazyAsync(), LazyAsync.Params(durablePath=str(tmp_path / "shared"))),
        "memory-snapshot": (
            MemorySnapshot(),
            MemorySnapshot.Params(path=str(tmp_path / "shm"), durablePath=str(tmp_path / "shared")),
        ),
    }


@pytest.mark.parametrize("name", ["blocking", "lazy-async", "memory-snapshot"])
def test_restore_returns_exactly_what_each_plugin_saved(tmp_path, name):
    plugin, params = plugin_cases(tmp_path)[name]
    target = target_in(tmp_path)
    model, optimizer = trained(steps=3)
    saved = state_at(3, model, optimizer)

    handle = plugin.save(state=saved, target=target, params=params)
    handle.before_update()
    assert handle.wait(30) and handle.done and handle.step == 3
    records = handle.records()

    assert records and all(r.error is None and r.step == 3 and r.bytes > 0 for r in records)
    assert_restored(plugin.restore(target=target, params=params), saved)
    assert target.rejected == []


def test_a_restored_state_loads_back_into_a_fresh_model_and_optimizer_and_trains_identically(tmp_path):
    plugin, params = plugin_cases(tmp_path)["lazy-async"]
    target = target_in(tmp_path)
    model, optimizer = trained(steps=2)
    plugin.save(state=state_at(2, model, optimizer), target=target, params=params).wait(30)
    restored = plugin.restore(target=target, params=params)
    fresh, fresh_optimizer = trained(steps=0, seed=5)
    fresh.load_state_dict(restored.model)
    fresh_optimizer.load_state_dict(restored.optimizer)

    for m, o in ((model, optimizer), (fresh, fresh_optimizer)):
        torch.manual_seed(9)
        o.zero_grad()
        m(torch.randn(3, 4)).pow(2).sum().backward()
        o.step()

    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)


# --- retention ---------------------------------------------------------------------------------


def test_retention_keeps_the_newest_keep_checkpoints_of_each_level(tmp_path):
    plugin = LazyAsync()
    params = LazyAsync.Params(keep=2, durablePath=str(tmp_path / "shared"), durableKeep=3)
    target = target_in(tmp_path)
    for step in range(1, 6):
        assert plugin.save(state=a_state(step), target=target, params=params).wait(30)
    local, durable = (level.path for level in plugin.levels(target, params))

    assert steps_in(local) == [4, 5]
    assert steps_in(durable) == [3, 4, 5]


def test_retention_never_deletes_the_checkpoint_just_written_when_higher_steps_are_left_over(tmp_path):
    level = tmp_path / "level"
    for step in (10, 20):
        files.write(level, a_state(step), {"level": "local"})
    resumed = Path(files.write(level, a_state(15), {"level": "local"}).path)  # a run resumed at 15

    removed = files.retain(level, 1, protect=resumed)

    assert resumed.exists()
    assert steps_in(level) == [15, 20]
    assert [files.step_of(p) for p in removed] == [10]


def test_retention_does_not_count_a_checkpoint_without_a_readable_manifest(tmp_path):
    level = tmp_path / "level"
    files.write(level, a_state(1), {"level": "local"})
    broken = Path(files.write(level, a_state(2), {"level": "local"}).path)
    (broken / files.MANIFEST).write_text("not json")

    files.retain(level, 1)

    assert steps_in(level) == [1, 2]
    assert files.newest([level], lambda path, why: None).step == 1


def test_retention_refuses_to_keep_nothing(tmp_path):
    with pytest.raises(ValueError, match="keep must be at least 1"):
        files.retain(tmp_path, 0)


# --- memory-snapshot's two levels --------------------------------------------------------------


def test_memory_snapshot_keeps_k_in_memory_and_writes_every_mth_to_durable(tmp_path):
    plugin = MemorySnapshot()
    params = MemorySnapshot.Params(
        path=str(tmp_path / "shm"),
        keep=2,
        durablePath=str(tmp_path / "shared"),
        durableKeep=5,
        durableEvery=3,
    )
    target = target_in(tmp_path)
    levels = {}
    for step in range(1, 8):
        handle = plugin.save(state=a_state(step), target=target, params=params)
        assert handle.wait(30)
        levels[step] = sorted(r.level for r in handle.records())
    memory, durable = (level.path for level in plugin.levels(target, params))

    assert steps_in(memory) == [6, 7]
    assert steps_in(durable) == [1, 4, 7]
    assert [step for step, reached in levels.items() if "durable" in reached] == [1, 4, 7]
    assert all("memory" in reached for reached in levels.values())


def test_memory_snapshot_restores_the_newest_over_both_levels(tmp_path):
    plugin = MemorySnapshot()
    params = MemorySnapshot.Params(
        path=str(tmp_path / "shm"), durablePath=str(tmp_path / "shared"), durableEvery=2
    )
    target = target_in(tmp_path)
    states = {step: a_state(step, seed=step) for step in (1, 2)}
    for state in states.values():
        plugin.save(state=state, target=target, params=params).wait(30)
    memory, durable = (level.path for level in plugin.levels(target, params))
    assert steps_in(durable) == [1]

    assert_restored(plugin.restore(target=target, params=params), states[2])  # from memory

    for path in files.listing(memory):
        flip_a_byte(path)
    assert_restored(plugin.restore(target=target, params=params), states[1])  # from durable
    assert len(target.rejected) == 2


def test_the_memory_level_directory_is_private_to_its_owner(tmp_path):
    plugin = MemorySnapshot()
    params = MemorySnapshot.Params(path=str(tmp_path / "shm" / "fresh"), durablePath=str(tmp_path / "shared"))
    target = target_in(tmp_path)
    plugin.save(state=a_state(1), target=target, params=params).wait(30)
    memory = plugin.levels(target, params)[0].path

    for directory in (memory, memory.parent):
        assert directory.stat().st_mode & 0o777 == 0o700


def test_a_level_under_a_directory_another_user_could_rename_is_refused(tmp_path):
    shared = tmp_path / "open"
    shared.mkdir()
    shared.chmod(0o777)  # world-writable without the sticky bit: anyone may swap our level

    with pytest.raises(PermissionError, match="lets another user replace"):
        files.make_level(shared / "job")


def test_a_level_that_is_a_symlink_is_refused(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")

    with pytest.raises(PermissionError, match="not a plain directory"):
        files.make_level(tmp_path / "link")


# --- bounded host memory and the lazy copy -----------------------------------------------------


@pytest.fixture
def slow_flush(monkeypatch) -> threading.Event:
    """Each checkpoint_files.write waits until the returned Event is set."""
    release = threading.Event()
    real_write = files.write

    def write(*args: Any, **kwargs: Any):
        assert release.wait(30), "the test never released the flush"
        return real_write(*args, **kwargs)

    monkeypatch.setattr(files, "write", write)
    return release


def test_a_save_while_the_only_buffer_set_is_flushing_is_skipped_with_a_record(tmp_path, slow_flush):
    plugin = LazyAsync()
    params = LazyAsync.Params(hostBuffers=1, whenBusy="skip")
    target = target_in(tmp_path)

    first = plugin.save(state=a_state(1), target=target, params=params)
    second = plugin.save(state=a_state(2), target=target, params=params)

    assert second.done and not first.done
    (skipped,) = second.records()
    assert skipped.skipped and skipped.step == 2 and "whenBusy: skip" in skipped.error
    slow_flush.set()
    assert first.wait(30) and [r.step for r in first.records()] == [1]
    assert steps_in(Path(target.local_dir)) == [1]


def test_a_save_while_the_only_buffer_set_is_flushing_waits_with_when_busy_wait_and_both_complete(
    tmp_path, slow_flush
):
    plugin = LazyAsync()
    params = LazyAsync.Params(hostBuffers=1, whenBusy="wait")
    target = target_in(tmp_path)
    first = plugin.save(state=a_state(1), target=target, params=params)
    handles = []
    second_call = threading.Thread(
        target=lambda: handles.append(plugin.save(state=a_state(2), target=target, params=params))
    )
    second_call.start()
    second_call.join(0.5)
    assert second_call.is_alive() and not first.done  # the second save is waiting for the buffers

    slow_flush.set()
    second_call.join(30)
    (second,) = handles
    assert first.wait(30) and second.wait(30)
    assert [r.skipped for r in first.records() + second.records()] == [False, False]
    assert steps_in(Path(target.local_dir)) == [1, 2]


def test_two_buffer_sets_let_a_second_save_start_while_the_first_flushes(tmp_path, slow_flush):
    plugin = LazyAsync()
    params = LazyAsync.Params(hostBuffers=2, whenBusy="skip")
    target = target_in(tmp_path)

    first = plugin.save(state=a_state(1), target=target, params=params)
    second = plugin.save(state=a_state(2), target=target, params=params)
    third = plugin.save(state=a_state(3), target=target, params=params)

    assert not second.done and third.done and third.records()[0].skipped
    slow_flush.set()
    assert first.wait(30) and second.wait(30)
    assert steps_in(Path(target.local_dir)) == [1, 2]


def test_before_update_blocks_until_the_copy_is_done_and_the_checkpoint_holds_the_state_at_save_time(
    tmp_path, monkeypatch
):
    plugin = LazyAsync()
    params = LazyAsync.Params()
    target = target_in(tmp_path)
    model, optimizer = trained()
    saved = state_at(2, model, optimizer)
    before = {k: v.clone() for k, v in saved.model.items()}
    copying, release = threading.Event(), threading.Event()
    real_copy = checkpoint_snapshot.Snapshotter._copy

    def slow_copy(handle: Any, copies: Any) -> None:
        copying.set()
        release.wait(30)
        real_copy(handle, copies)

    monkeypatch.setattr(checkpoint_snapshot.Snapshotter, "_copy", staticmethod(slow_copy))
    handle = plugin.save(state=saved, target=target, params=params)
    assert copying.wait(30)
    waiter = threading.Thread(target=handle.before_update)
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive()  # the copy has not finished: the optimizer must not run yet

    release.set()
    waiter.join(30)
    assert not waiter.is_alive()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)  # what optimizer.step() would do, right after before_update
    saved.data["position"] = 999  # the loop moves on in the dicts it passed, too
    assert handle.wait(30)

    restored = plugin.restore(target=target, params=params)
    assert_same(restored.model, before)
    assert restored.data["position"] == 6
    assert not torch.equal(restored.model["0.weight"], model.state_dict()["0.weight"])


def test_a_failed_copy_is_reported_and_never_written_as_a_checkpoint(tmp_path, monkeypatch):
    plugin = LazyAsync()
    params = LazyAsync.Params()
    target = target_in(tmp_path)

    def broken_copy(handle: Any, copies: Any) -> None:
        handle._copy_error = RuntimeError("copy failed")
        handle.copied.set()

    monkeypatch.setattr(checkpoint_snapshot.Snapshotter, "_copy", staticmethod(broken_copy))
    handle = plugin.save(state=a_state(1), target=target, params=params)
    handle.before_update()

    assert handle.wait(30)
    (record,) = handle.records()
    assert "copy failed" in record.error
    assert steps_in(Path(target.local_dir)) == []


# --- failing levels ------------------------------------------------------------------------------


def test_an_unwritable_durable_level_is_reported_with_an_error_and_does_not_hang_wait(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the durable directory should be")
    plugin = LazyAsync()
    params = LazyAsync.Params(durablePath=str(blocker))
    target = target_in(tmp_path)

    handle = plugin.save(state=a_state(1), target=target, params=params)

    assert handle.wait(30)
    local, durable = handle.records()
    assert local.level == "local" and local.error is None
    assert durable.level == "durable" and durable.error and durable.path == ""
    again = plugin.save(state=a_state(2), target=target, params=params)
    assert again.wait(30) and [r.level for r in again.records()] == ["local", "durable"]


def test_a_failing_first_level_still_writes_the_snapshot_to_the_next_one(tmp_path):
    blocker = tmp_path / "shm-file"
    blocker.write_text("not a directory")
    plugin = MemorySnapshot()
    params = MemorySnapshot.Params(path=str(blocker), durablePath=str(tmp_path / "shared"), durableEvery=1)
    target = target_in(tmp_path)
    saved = a_state(1)

    handle = plugin.save(state=saved, target=target, params=params)

    assert handle.wait(30)
    memory, durable = handle.records()
    assert memory.level == "memory" and memory.error
    assert durable.level == "durable" and durable.error is None
    assert_restored(plugin.restore(target=target, params=params), saved)


def test_an_unwritable_blocking_path_raises_to_the_caller(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")

    with pytest.raises(OSError):
        Blocking().save(
            state=a_state(1), target=target_in(tmp_path), params=Blocking.Params(path=str(blocker))
        )


def test_a_save_with_when_busy_wait_does_not_hang_when_the_flusher_has_died(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint_snapshot.Snapshotter, "_flush_forever", lambda self: None)  # dies at once
    levels = [checkpoint_snapshot.Level("local", tmp_path / "local", keep=2)]
    snapshots = checkpoint_snapshot.Snapshotter(
        levels, {"owner": "TrainingJob/t"}, buffers=1, when_busy="wait"
    )
    snapshots._flusher.join(10)
    snapshots.save(a_state(1))  # takes the only buffer set; nobody will ever hand it back

    second = snapshots.save(a_state(2))

    assert second.done
    (record,) = second.records()
    assert record.step == 2 and "flusher has stopped" in record.error


def test_a_closed_snapshotter_refuses_a_save_and_still_flushes_what_it_held(tmp_path, slow_flush):
    levels = [checkpoint_snapshot.Level("local", tmp_path / "local", keep=2)]
    snapshots = checkpoint_snapshot.Snapshotter(
        levels, {"owner": "TrainingJob/t"}, buffers=1, when_busy="wait"
    )
    first = snapshots.save(a_state(1))
    snapshots.close()

    second = snapshots.save(a_state(2))

    assert second.done
    (record,) = second.records()
    assert "closed" in record.error
    slow_flush.set()
    assert first.wait(30) and [r.step for r in first.records()] == [1]
    snapshots._flusher.join(10)
    assert not snapshots._flusher.is_alive()


def test_the_snapshotters_a_process_keeps_are_bounded_and_the_evicted_ones_stop(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint_snapshot, "MAX_SNAPSHOTTERS", 2)
    plugin = LazyAsync()
    params = LazyAsync.Params()
    made = []
    for job in range(4):
        target = CheckpointTarget(owner=f"TrainingJob/t{job}", local_dir=str(tmp_path / f"t{job}"))
        assert plugin.save(state=a_state(1), target=target, params=params).wait(30)
        made.append(next(reversed(checkpoint_snapshot._snapshotters.values())))

    assert len(checkpoint_snapshot._snapshotters) == 2
    for evicted in made[:2]:
        evicted._flusher.join(10)
        assert not evicted.alive
    assert all(s.alive for s in made[2:])


# --- parameters ----------------------------------------------------------------------------------

BAD_PARAMS = {
    "relative path": ({"path": "checkpoints"}, "path"),
    "keep 0": ({"keep": 0}, "keep"),
    "whenBusy other": ({"whenBusy": "sometimes"}, "whenBusy"),
    "unknown field": ({"colour": "red"}, "colour"),
    "relative durablePath": ({"durablePath": "shared/ckpt"}, "durablePath"),
}


@pytest.mark.parametrize("plugin", [LazyAsync(), MemorySnapshot()], ids=["lazy-async", "memory-snapshot"])
@pytest.mark.parametrize("case", BAD_PARAMS, ids=list(BAD_PARAMS))
def test_validate_params_refuses_bad_parameters_naming_the_field(plugin, case):
    params, field = BAD_PARAMS[case]

    with pytest.raises(manager.PluginError) as excinfo:
        manager.validate_params(plugin, params)

    assert [e["field"] for e in excinfo.value.errors] == [f"spec.params.{field}"]


def test_blocking_refuses_a_relative_path_and_an_async_field_it_does_not_have():
    with pytest.raises(manager.PluginError) as excinfo:
        manager.validate_params(Blocking(), {"path": "x", "whenBusy": "wait"})

    assert sorted(e["field"] for e in excinfo.value.errors) == ["spec.params.path", "spec.params.whenBusy"]


def test_validate_params_refuses_a_path_that_climbs_out_with_dots():
    with pytest.raises(manager.PluginError) as excinfo:
        manager.validate_params(LazyAsync(), {"path": "/srv/ckpt/../../etc"})

    assert [e["field"] for e in excinfo.value.errors] == ["spec.params.path"]


def test_validate_params_accepts_good_parameters_and_fills_defaults():
    params = manager.validate_params(MemorySnapshot(), {"path": "/dev/shm/x", "durableEvery": 10})

    assert (params.path, params.keep, params.durableEvery, params.whenBusy) == ("/dev/shm/x", 2, 10, "wait")


def checkpointer_policy(name: str, plugin: str, params: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "Policy",
        "metadata": {"name": name},
        "spec": {"type": "checkpointer", "plugin": plugin, "params": params},
    }


def training_job(name: str, policy: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"source": "builtin:tiny-llama"},
            "data": {"source": "builtin:synthetic"},
            "steps": 10,
            "checkpoint": {"policy": policy, "everySteps": 5},
        },
    }


def refused_fields(response: Any) -> list[str]:
    assert 400 <= response.status_code < 500, response.content
    return [detail.get("field") for detail in response.json()["error"]["details"]]


@pytest.mark.parametrize("case", BAD_PARAMS, ids=list(BAD_PARAMS))
def test_the_api_refuses_a_checkpointer_policy_with_bad_params_naming_the_field(operator, case):
    params, field = BAD_PARAMS[case]

    response = operator.apply(checkpointer_policy("ckpt", "lazy-async", params))

    assert f"spec.params.{field}" in refused_fields(response)
    assert operator.get("/policies/ckpt").status_code == 404


def test_the_api_refuses_a_training_job_applied_with_a_checkpointer_policy_with_bad_params(operator):
    documents = [
        checkpointer_policy("ckpt", "memory-snapshot", {"keep": 0}),
        training_job("pretrain", "ckpt"),
    ]

    response = operator.apply(documents)

    assert "spec.params.keep" in refused_fields(response)
    assert operator.get("/trainingjobs/pretrain").status_code == 404


def test_the_api_accepts_a_training_job_with_a_good_checkpointer_policy(operator):
    documents = [
        checkpointer_policy("ckpt", "lazy-async", {"path": "/var/lib/ckpt", "whenBusy": "skip"}),
        training_job("pretrain", "ckpt"),
    ]

    response = operator.apply(documents)

    assert response.status_code == 200, response.content
    assert operator.get("/trainingjobs/pretrain").status_code == 200


def test_the_same_directory_for_both_levels_is_refused():
    with pytest.raises(manager.PluginError) as excinfo:
        manager.validate_params(LazyAsync(), {"path": "/srv/ckpt", "durablePath": "/srv/ckpt/"})

    assert "durablePath must differ" in excinfo.value.errors[0]["message"]


def test_a_checkpoint_directory_is_readable_by_its_owner_only(tmp_path):
    level = tmp_path / "deep" / "level"
    files.write(level, a_state(1), {"level": "local"})

    assert os.stat(level).st_mode & 0o777 == 0o700
    assert os.stat(level.parent).st_mode & 0o777 == 0o700


def test_a_restored_state_says_where_it_was_found(tmp_path):
    target = target_in(tmp_path)
    params = Blocking.Params()
    saved = Blocking().save(state=a_state(4), target=target, params=params).records()[0]

    origin = Blocking().restore(target=target, params=params).origin
    assert (origin.step, origin.level, origin.path, origin.bytes) == (4, "local", saved.path, saved.bytes)
    assert origin.seconds > 0 and origin.completed_at > 0


def test_the_runs_last_state_reaches_every_level_whatever_durable_every_says(tmp_path):
    plugin, target = MemorySnapshot(), target_in(tmp_path)
    params = MemorySnapshot.Params(path=str(tmp_path / "memory"), durableEvery=100)
    first = plugin.save(state=a_state(1), target=target, params=params)
    assert first.wait(30)
    middle = plugin.save(state=a_state(2), target=target, params=params)
    assert middle.wait(30)
    last = plugin.save(state=replace(a_state(3), final=True), target=target, params=params)
    assert last.wait(30)

    assert [r.level for r in middle.records()] == ["memory"]  # not its turn at the durable level
    assert [r.level for r in last.records()] == ["memory", "durable"]
