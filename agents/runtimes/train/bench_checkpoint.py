"""``flotilla bench checkpoint``: what each checkpointer costs a training run, and how fast a
run killed with SIGKILL comes back, measured side by side on the real training runtime.

Every configuration runs ``python -m agents.runtimes.train`` as the agent does (a subprocess
with a per-job ``FLOTILLA_CHECKPOINT_DIR``), on the same model, data, seed and thread count,
one after the other, and is measured from the runtime's own event lines:

- **step time**: the ``progress`` events' ``stepMs`` (a line every step), after a warm-up;
  its overhead is the ratio to the run without a checkpointer (``none``) of the same run.
- **stall**: ``stallMs``, the time the loop was blocked in ``save`` or ``before_update``.
- **latency until durable**: the ``checkpoint`` events' ``seconds`` (from the save call) at
  the plugin's last level; for ``memory-snapshot``, the durable level's (every M-th).
- **host memory**: the process's peak resident set (``VmHWM``), read while it runs, plus
  the snapshots kept on tmpfs (``memory-snapshot``), which are host memory too.
- **recovery**: a run is killed with SIGKILL after its first checkpoints, then started
  again on the same directory; ``restored.seconds`` is the runtime's time to find, verify
  and load the newest checkpoint, and ``restart to first step`` the whole restart (process
  start and torch import included). Disk checkpoints are measured cold (their pages evicted
  from the page cache with ``posix_fadvise``, as on a new node or after a reboot) and warm
  (right after the kill on the same node); tmpfs has no colder state.

The default model (2 layers × 1024 hidden, 23.7 M parameters, 272 MB of fp32 weights and
AdamW state) with batches of 4 × 128 tokens is sized so that a blocking save takes about
as long as a one-thread training step on a 2-core CPU; ``--layers``/``--hidden``/``--batch-size``
change it. On a CPU the training process gets one thread fewer than the cores
(``train_threads``), for every configuration alike.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Progress = Callable[[str], None]
PLUGINS = ("none", "blocking", "lazy-async", "memory-snapshot")
MEMORY_ROOT = Path("/dev/shm")  # noqa: S108 - the memory level's tmpfs; a private directory is made in it
EVENT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class BenchSettings:
    """What one ``flotilla bench checkpoint`` run does."""

    device: str = "cpu"
    every: tuple[int, ...] = (1, 10)
    steps: int = 25
    warmup: int = 3
    layers: int = 2
    hidden: int = 1024
    intermediate: int = 2752
    heads: int = 8
    kv_heads: int = 4
    batch_size: int = 4
    seq_len: int = 128
    threads: int | None = None  # torch threads of the training process; None: see train_threads
    durable_every: int = 5  # memory-snapshot's M
    kill_after: int = 4  # recovery runs are killed once this step's checkpoint is written
    repeats: int = 2  # runs of each configuration, interleaved
    plugins: tuple[str, ...] = PLUGINS  # "none" first: the baseline
    quick: bool = False

    def model(self) -> dict[str, Any]:
        config = {
            "layers": self.layers,
            "hidden": self.hidden,
            "intermediate": self.intermediate,
            "heads": self.heads,
            "kvHeads": self.kv_heads,
            "maxSeqLen": max(64, self.seq_len),
        }
        return {"source": "builtin:tiny-llama", "config": config}


def train_threads(settings: BenchSettings) -> int | None:
    """The training process's torch threads: on a CPU, one core fewer than the host has, so the
    checkpointers' host-side work (copies, serialisation, checksums, writes) has a core of its
    own, as it has on a GPU node where the GPU computes and the host CPU is free; the same for
    every configuration, the baseline included. On CUDA: torch's default."""
    if settings.threads:
        return settings.threads
    if settings.device == "cpu":
        return max(1, (os.cpu_count() or 1) - 1)
    return None


def quick_settings(settings: BenchSettings) -> BenchSettings:
    """The small run ``--quick`` makes (and the tests): every configuration, a tiny model."""
    return BenchSettings(
        device=settings.device,
        every=(1, 5),
        steps=8,
        warmup=1,
        layers=1,
        hidden=64,
        intermediate=128,
        heads=2,
        kv_heads=1,
        batch_size=2,
        seq_len=16,
        threads=settings.threads,
        durable_every=2,
        kill_after=2,
        repeats=1,
        plugins=settings.plugins,
        quick=True,
    )


@dataclass
class Run:
    """One training process as the bench saw it."""

    events: list[dict[str, Any]] = field(default_factory=list)
    peak_rss_bytes: int = 0
    exit_code: int | None = None
    seconds: float = 0.0
    first_progress_s: float | None = None  # from the spawn

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == kind]


def _peak_rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _params(plugin: str, settings: BenchSettings, memory_dir: Path) -> dict[str, Any]:
    if plugin == "memory-snapshot":
        return {"path": str(memory_dir), "durableEvery": settings.durable_every}
    return {}


def train_config(
    settings: BenchSettings, plugin: str, every: int, steps: int, memory_dir: Path
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "model": settings.model(),
        "data": {"source": "builtin:synthetic"},
        "steps": steps,
        "batchSize": settings.batch_size,
        "seqLen": settings.seq_len,
        "seed": 0,
    }
    if plugin != "none":
        config["checkpoint"] = {
            "plugin": plugin,
            "params": _params(plugin, settings, memory_dir),
            "everySteps": every,
        }
    return config


def run_training(
    config: dict[str, Any],
    workdir: Path,
    settings: BenchSettings,
    stop_when: Callable[[dict[str, Any]], signal.Signals | None] | None = None,
) -> Run:
    """Run the training runtime on ``config`` with ``workdir/checkpoints`` as its job directory;
    ``stop_when`` may answer an event with a signal to send (the run then ends with it)."""
    config_path = workdir / "config.json"
    config_path.write_text(json.dumps(config))
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "FLOTILLA_CHECKPOINT_DIR": str(workdir / "checkpoints"),
        "FLOTILLA_CHECKPOINT_OWNER": "TrainingJob/bench",
    }
    if threads := train_threads(settings):
        env["OMP_NUM_THREADS"] = str(threads)
    argv = [
        sys.executable,
        "-m",
        "agents.runtimes.train",
        "--config",
        str(config_path),
        "--device",
        settings.device,
    ]
    run = Run()
    started = time.monotonic()
    with open(workdir / "train.log", "ab") as log:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, env=env)
        assert process.stdout is not None
        try:
            for raw in process.stdout:
                run.peak_rss_bytes = max(run.peak_rss_bytes, _peak_rss(process.pid))
                if not raw.startswith(b'{"event"'):
                    continue
                event = json.loads(raw)
                run.events.append(event)
                if event["event"] == "progress" and run.first_progress_s is None:
                    run.first_progress_s = time.monotonic() - started
                if stop_when is not None and (sig := stop_when(event)) is not None:
                    process.send_signal(sig)
                    if sig == signal.SIGKILL:
                        break
                if time.monotonic() - started > EVENT_TIMEOUT_S:
                    process.kill()
                    raise TimeoutError(f"a training run took over {EVENT_TIMEOUT_S:.0f} s; see {log.name}")
        finally:
            run.exit_code = process.wait()
            run.seconds = time.monotonic() - started
    return run


def _mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 2) if values else None


def _last_level(plugin: str) -> str:
    return "durable" if plugin == "memory-snapshot" else "local"


def summarize(run: Run, plugin: str, settings: BenchSettings, memory_dir: Path) -> dict[str, Any]:
    """The figures of one (plugin, every) run."""
    progress = [e for e in run.of("progress") if e["step"] > settings.warmup]
    step_ms = [float(e["stepMs"]) for e in progress if e.get("stepMs") is not None]
    stall_ms = [float(e.get("stallMs") or 0.0) for e in progress]
    done = [e for e in run.of("checkpoint") if e.get("level") == _last_level(plugin)]
    failed = run.of("checkpointFailed")
    memory_bytes = 0
    if plugin == "memory-snapshot":
        memory_bytes = sum(f.stat().st_size for f in memory_dir.rglob("*") if f.is_file())
    return {
        "exitCode": run.exit_code,
        "stepMsMean": _mean(step_ms),
        "stepMsP50": round(statistics.median(step_ms), 2) if step_ms else None,
        "stallMsMean": _mean(stall_ms),
        "checkpoints": len(done),
        "skipped": sum(1 for e in failed if e.get("skipped")),
        "failed": sum(1 for e in failed if not e.get("skipped")),
        "durableLatencySMean": round(statistics.fmean(float(e["seconds"]) for e in done), 3)
        if done
        else None,
        "checkpointBytes": int(done[-1]["bytes"]) if done else None,
        "peakRssMB": round(run.peak_rss_bytes / 2**20, 1),
        "tmpfsMB": round(memory_bytes / 2**20, 1),
        "hostMemoryMB": round((run.peak_rss_bytes + memory_bytes) / 2**20, 1),
        "wallSeconds": round(run.seconds, 1),
    }


def combine(
    runs: dict[tuple[str, int], list[dict[str, Any]]], everies: tuple[int, ...], plugins: tuple[str, ...]
) -> list[dict[str, Any]]:
    """One result per (plugin, every): the mean over its runs of each figure, the runs' step
    times kept, and the step-time overhead against the run without a checkpointer."""
    results = []
    for every in everies:
        baseline: float | None = None
        for plugin in plugins:
            mine = runs[(plugin, every)]
            result: dict[str, Any] = {"plugin": plugin, "everySteps": every, "runs": len(mine)}
            for key, value in mine[0].items():
                values = [run[key] for run in mine if run[key] is not None]
                if isinstance(value, int | float) and not isinstance(value, bool) and values:
                    result[key] = round(statistics.fmean(values), 3)
                else:
                    result[key] = value
            result["stepMsRuns"] = [run["stepMsMean"] for run in mine]
            baseline = baseline or result["stepMsMean"]
            result["stepOverhead"] = (
                round(result["stepMsMean"] / baseline - 1, 4) if result["stepMsMean"] and baseline else None
            )
            results.append(result)
    return results


def evict_page_cache(root: Path) -> int:
    """Drop the cached pages of every file under ``root`` (they were fsynced, so they are
    clean and can go); the bytes asked to drop."""
    dropped = 0
    for path in root.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                dropped += path.stat().st_size
            finally:
                os.close(fd)
    return dropped


def recovery(
    plugin: str, settings: BenchSettings, workdir: Path, memory_dir: Path, say: Progress
) -> dict[str, Any]:
    """Kill a run with SIGKILL after step ``kill_after``'s checkpoint reached its last level,
    then restart it on the same directory, cold and (for disk) warm."""
    steps = settings.kill_after + 50
    config = train_config(settings, plugin, 1, steps, memory_dir)
    last = _last_level(plugin)

    def kill_at(event: dict[str, Any]) -> signal.Signals | None:
        due = event.get("event") == "checkpoint" and event.get("level") == last
        return signal.SIGKILL if due and event["step"] >= settings.kill_after else None

    killed = run_training(config, workdir, settings, kill_at)
    out: dict[str, Any] = {"killedAtExit": killed.exit_code}
    states = ("cold", "warm") if plugin != "memory-snapshot" else ("memory",)
    if settings.quick:
        states = states[:1]  # a smoke test: one restart each
    for state in states:
        if state == "cold":
            out["evictedMB"] = round(evict_page_cache(workdir / "checkpoints") / 2**20, 1)
        restarted = run_training(
            config, workdir, settings, lambda e: signal.SIGKILL if e.get("event") == "progress" else None
        )
        restored = restarted.of("restored")
        out[state] = {
            "restoredStep": restored[0]["step"] if restored else None,
            "restoredLevel": restored[0].get("level") if restored else None,
            "restoreSeconds": round(float(restored[0]["seconds"]), 4) if restored else None,
            "restartToFirstStepSeconds": round(restarted.first_progress_s or 0.0, 2),
        }
        figures = out[state]
        say(
            f"  recovery ({state}): restored step {figures['restoredStep']} in "
            f"{figures['restoreSeconds']} s, first step {figures['restartToFirstStepSeconds']} s after start"
        )
    return out


def run_bench(settings: BenchSettings, say: Progress) -> dict[str, Any]:
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    recoveries: dict[str, Any] = {}
    root = Path(tempfile.mkdtemp(prefix="flotilla-bench-checkpoint-"))
    memory_root = Path(tempfile.mkdtemp(prefix="flotilla-bench-", dir=MEMORY_ROOT))
    try:
        runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for repeat in range(settings.repeats):  # interleaved, so drift of the host hits all alike
            for every in settings.every:
                for plugin in settings.plugins:
                    workdir, memory_dir = (
                        root / f"{plugin}-{every}-{repeat}",
                        memory_root / f"{plugin}-{every}",
                    )
                    workdir.mkdir()
                    say(
                        f"[every {every}, run {repeat + 1}/{settings.repeats}] {plugin}: "
                        f"{settings.steps} steps ..."
                    )
                    config = train_config(settings, plugin, every, settings.steps, memory_dir)
                    run = run_training(config, workdir, settings)
                    if run.exit_code != 0:
                        raise RuntimeError(
                            f"{plugin} (every {every}) exited {run.exit_code}; see {workdir}/train.log"
                        )
                    figures = summarize(run, plugin, settings, memory_dir)
                    runs.setdefault((plugin, every), []).append(figures)
                    say(
                        f"  step {figures['stepMsMean']} ms, stall {figures['stallMsMean']} ms, "
                        f"{figures['checkpoints']} checkpoints, durable after "
                        f"{figures['durableLatencySMean']} s, host memory {figures['hostMemoryMB']} MB"
                    )
                    shutil.rmtree(workdir, ignore_errors=True)
                    shutil.rmtree(memory_dir, ignore_errors=True)
        results = combine(runs, settings.every, settings.plugins)
        for plugin in settings.plugins[1:]:
            workdir, memory_dir = root / f"recovery-{plugin}", memory_root / f"recovery-{plugin}"
            workdir.mkdir()
            say(f"[recovery] {plugin}: kill -9 after step {settings.kill_after}'s checkpoint, then restart")
            recoveries[plugin] = recovery(plugin, settings, workdir, memory_dir, say)
            shutil.rmtree(workdir, ignore_errors=True)
            shutil.rmtree(memory_dir, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(memory_root, ignore_errors=True)
    return {
        "bench": "checkpoint",
        "settings": {
            "device": settings.device,
            "every": list(settings.every),
            "steps": settings.steps,
            "warmup": settings.warmup,
            "model": settings.model(),
            "batchSize": settings.batch_size,
            "seqLen": settings.seq_len,
            "threads": train_threads(settings) or "torch default",
            "memorySnapshotDurableEvery": settings.durable_every,
            "quick": settings.quick,
        },
        "machine": machine(settings.device),
        "results": results,
        "recovery": recoveries,
        "goals": goals(results, recoveries),
        "wallSeconds": round(time.monotonic() - started, 1),
    }


def machine(device: str) -> dict[str, Any]:
    import torch

    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or "cpu"
    return {
        "host": platform.node(),
        "cpuCores": os.cpu_count(),
        "device": name,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def goals(results: list[dict[str, Any]], recoveries: dict[str, Any]) -> dict[str, Any]:
    """The issue's goals as measured here (reported, never asserted)."""
    every_1 = {r["plugin"]: r for r in results if r["everySteps"] == 1}
    out: dict[str, Any] = {}
    if "lazy-async" in every_1 and "blocking" in every_1:
        out["lazyAsyncOverheadEvery1"] = every_1["lazy-async"]["stepOverhead"]
        out["lazyAsyncAtMost5Percent"] = (every_1["lazy-async"]["stepOverhead"] or 0) <= 0.05
        out["blockingOverheadEvery1"] = every_1["blocking"]["stepOverhead"]
        out["blockingAtLeast50Percent"] = (every_1["blocking"]["stepOverhead"] or 0) >= 0.5
    memory = recoveries.get("memory-snapshot", {}).get("memory", {}).get("restoreSeconds")
    for disk in ("blocking", "lazy-async"):
        for state in ("cold", "warm"):
            seconds = recoveries.get(disk, {}).get(state, {}).get("restoreSeconds")
            if memory and seconds:
                out[f"memoryVs{disk.title().replace('-', '')}{state.title()}"] = round(seconds / memory, 2)
    cold = [v for k, v in out.items() if k.startswith("memoryVs") and k.endswith("Cold")]
    out["memoryRecoveryAtLeast5xFasterThanColdDisk"] = bool(cold) and min(cold) >= 5
    return out
