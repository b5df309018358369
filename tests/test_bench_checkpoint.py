"""``flotilla bench checkpoint --quick``: every checkpointer runs through the real training
runtime, is measured against the run without one, and is killed and restored."""

from __future__ import annotations

import dataclasses

import pytest

from agents.runtimes.train import bench_checkpoint
from agents.runtimes.train.bench_checkpoint import BenchSettings, quick_settings


@pytest.mark.slow
def test_a_quick_run_measures_every_checkpointer_against_none_and_restores_each_after_kill_9():
    settings = dataclasses.replace(quick_settings(BenchSettings()), every=(1,), steps=6)
    report = bench_checkpoint.run_bench(settings, lambda line: None)

    results = {r["plugin"]: r for r in report["results"]}
    assert list(results) == ["none", "blocking", "lazy-async", "memory-snapshot"]
    assert results["none"]["checkpoints"] == 0 and results["none"]["stepOverhead"] == 0
    for plugin in ("blocking", "lazy-async"):
        # every step checkpointed, each reaching its last level, none failed
        assert results[plugin]["checkpoints"] == settings.steps and results[plugin]["failed"] == 0
        assert results[plugin]["durableLatencySMean"] > 0 and results[plugin]["checkpointBytes"] > 0
    # memory-snapshot: snapshots 1, 1 + M, ... and the last reach the durable level; the rest stay in memory
    durable = {*range(0, settings.steps, settings.durable_every), settings.steps - 1}
    assert results["memory-snapshot"]["checkpoints"] == len(durable)
    assert results["memory-snapshot"]["tmpfsMB"] > 0
    assert all(r["stepMsMean"] > 0 and r["peakRssMB"] > 0 for r in results.values())

    recovery = report["recovery"]
    for plugin in ("blocking", "lazy-async"):
        assert recovery[plugin]["killedAtExit"] == -9
        for state in ("cold", "warm"):
            assert recovery[plugin][state]["restoredStep"] >= settings.kill_after
            assert recovery[plugin][state]["restoredLevel"] == "local"
            assert recovery[plugin][state]["restoreSeconds"] > 0
    memory = recovery["memory-snapshot"]["memory"]
    assert memory["restoredLevel"] == "memory" and memory["restoredStep"] >= settings.kill_after
    assert set(report["goals"]) >= {"lazyAsyncOverheadEvery1", "memoryRecoveryAtLeast5xFasterThanColdDisk"}
