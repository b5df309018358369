"""``flotilla bench checkpoint``, small: checkpointers run through the real training runtime,
measured against the run without one, and killed and restored. The kill-and-resume of every
plugin is tested in test_train_checkpoint.py; here the bench's own measuring is."""

from __future__ import annotations

import dataclasses

import pytest

from agents.runtimes.train import bench_checkpoint
from agents.runtimes.train.bench_checkpoint import BenchSettings, quick_settings
from agents.runtimes.train.bench_checkpoint_cli import format_tables


@pytest.mark.slow
def test_a_quick_run_measures_a_checkpointer_against_none_and_restores_it_after_kill_9():
    small = quick_settings(BenchSettings(plugins=("none", "lazy-async", "memory-snapshot")))
    settings = dataclasses.replace(small, every=(1,), steps=6)
    report = bench_checkpoint.run_bench(settings, lambda line: None)

    results = {r["plugin"]: r for r in report["results"]}
    assert list(results) == ["none", "lazy-async", "memory-snapshot"]
    assert results["none"]["checkpoints"] == 0 and results["none"]["stepOverhead"] == 0
    lazy = results["lazy-async"]
    # every step checkpointed, each reaching its last level, none failed
    assert lazy["checkpoints"] == settings.steps and lazy["failed"] == 0
    assert lazy["durableLatencySMean"] > 0 and lazy["checkpointBytes"] > 0
    # memory-snapshot: snapshots 1, 1 + M, ... and the last reach the durable level; the rest stay in memory
    durable = {*range(0, settings.steps, settings.durable_every), settings.steps - 1}
    assert results["memory-snapshot"]["checkpoints"] == len(durable)
    assert results["memory-snapshot"]["tmpfsMB"] > 0
    assert all(r["stepMsMean"] > 0 and r["peakRssMB"] > 0 and r["runs"] == 1 for r in results.values())

    recovery = report["recovery"]
    assert set(recovery) == {"lazy-async", "memory-snapshot"}
    cold = recovery["lazy-async"]["cold"]
    assert recovery["lazy-async"]["killedAtExit"] == -9 and "warm" not in recovery["lazy-async"]
    assert cold["restoredStep"] >= settings.kill_after and cold["restoredLevel"] == "local"
    assert cold["restoreSeconds"] > 0
    memory = recovery["memory-snapshot"]["memory"]
    assert memory["restoredLevel"] == "memory" and memory["restoredStep"] >= settings.kill_after
    assert "lazyAsyncOverheadEvery1" not in report["goals"]  # no blocking run to compare with
    assert "lazy-async" in format_tables(report)
