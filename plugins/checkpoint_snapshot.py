"""Lazy asynchronous multi-level snapshots (DataStates-LLM), for the lazy-async and
memory-snapshot checkpointers.

The observation DataStates builds on: between one optimizer step and the next, parameters
and optimizer state do not change (forward and backward only read them). So a checkpoint
need not stop training while it is written. At a checkpoint step :meth:`Snapshotter.save`
starts copying every tensor into preallocated host buffers and returns; training goes on
with the next forward and backward pass; the handle's ``before_update``, called just before
the next ``optimizer.step()``, blocks only if the copy has not finished. On CUDA the copies
are queued on a side stream into pinned buffers and the optimizer's stream waits on them on
the device, so the host never blocks at all. Once copied, a single flusher thread writes the
snapshot to the first level and copies it on to the next ones (``checkpoint_files``).

Host memory is bounded: a Snapshotter owns ``buffers`` sets of host buffers, each the size of
the state. A save that finds them all still being flushed either waits for one or is skipped,
as the plugin's ``whenBusy`` says, and the skip is reported as a record of its own.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from plugins import checkpoint_files as files
from plugins.types import CheckpointRecord, TrainingState


@dataclass
class Level:
    """One place snapshots go, in order: ``every`` says which checkpoints reach it (1: all;
    M: every M-th one written, counted per Snapshotter), ``durable`` whether it is fsynced."""

    name: str  # "memory" | "local" | "durable"
    path: Path
    keep: int
    every: int = 1
    durable: bool = True


class SnapshotHandle:
    """One save in flight: copy, then the levels. Satisfies ``plugins.types.CheckpointHandle``."""

    def __init__(self, step: int):
        self.step = step
        self.started = time.monotonic()
        self.copied = threading.Event()
        self._finished = threading.Event()
        self._lock = threading.Lock()
        self._records: list[CheckpointRecord] = []
        self._device_event: Any = None  # a CUDA event the optimizer's stream waits on

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._finished.wait(timeout)

    def before_update(self) -> None:
        if self._device_event is not None:
            import torch

            torch.cuda.current_stream().wait_event(self._device_event)  # the device waits, not the host
            return
        self.copied.wait()

    def records(self) -> list[CheckpointRecord]:
        with self._lock:
            out, self._records = self._records, []
        return out

    def _add(self, record: CheckpointRecord) -> None:
        with self._lock:
            self._records.append(record)

    def _finish(self) -> None:
        self.copied.set()
        self._finished.set()


@dataclass
class _Buffers:
    """One set of host buffers, keyed by the tensor's place in the state."""

    tensors: dict[tuple[Any, ...], Any] = field(default_factory=dict)


def _copy_tree(value: Any, key: tuple[Any, ...], buffers: _Buffers, copies: list[tuple[Any, Any]]) -> Any:
    """``value`` with every tensor replaced by its host buffer (allocated on first use, reused
    after); the (source, buffer) pairs to copy are appended to ``copies``."""
    import torch

    if isinstance(value, torch.Tensor):
        buffer = buffers.tensors.get(key)
        if buffer is None or buffer.shape != value.shape or buffer.dtype != value.dtype:
            pin = value.device.type == "cuda"
            buffer = torch.empty(value.shape, dtype=value.dtype, device="cpu", pin_memory=pin)
            buffers.tensors[key] = buffer
        copies.append((value, buffer))
        return buffer
    if isinstance(value, dict):
        return {k: _copy_tree(v, (*key, k), buffers, copies) for k, v in value.items()}
    if isinstance(value, list | tuple):
        items = [_copy_tree(v, (*key, i), buffers, copies) for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    return value  # numbers, strings, None: immutable, shared as they are


class Snapshotter:
    """The buffers and the flusher of one job's snapshots (one per checkpointer per target)."""

    def __init__(self, levels: list[Level], meta: dict[str, Any], buffers: int, when_busy: str):
        self.levels = levels
        self.meta = meta
        self.when_busy = when_busy
        self._free: queue.Queue[_Buffers] = queue.Queue()
        for _ in range(buffers):
            self._free.put(_Buffers())
        self._jobs: queue.Queue[tuple[SnapshotHandle, TrainingState, _Buffers]] = queue.Queue()
        self._written = 0
        for level in levels:
            files.clear_staging(level.path)
        threading.Thread(target=self._flush_forever, name="checkpoint-flusher", daemon=True).start()

    def save(self, state: TrainingState) -> SnapshotHandle:
        handle = SnapshotHandle(state.step)
        if self.when_busy == "skip":
            try:
                buffers = self._free.get_nowait()
            except queue.Empty:
                handle._add(self._skipped(state.step))
                handle._finish()
                return handle
        else:
            buffers = self._free.get()  # waits for a flush to hand its buffers back
        copies: list[tuple[Any, Any]] = []
        snapshot = replace(
            state,
            model=_copy_tree(state.model, ("model",), buffers, copies),
            optimizer=_copy_tree(state.optimizer, ("optimizer",), buffers, copies),
            rng=_copy_tree(state.rng, ("rng",), buffers, copies),
        )
        if any(source.device.type == "cuda" for source, _ in copies):
            self._copy_on_device(handle, copies)
        else:
            copier = threading.Thread(target=self._copy, args=(handle, copies), name="checkpoint-copy")
            copier.daemon = True
            copier.start()
        self._jobs.put((handle, snapshot, buffers))
        return handle

    def _skipped(self, step: int) -> CheckpointRecord:
        level = self.levels[0]
        why = f"skipped: every host buffer set still holds an earlier checkpoint (whenBusy: {self.when_busy})"
        return CheckpointRecord(step=step, level=level.name, path="", bytes=0, seconds=0.0,
                                completed_at=time.time(), skipped=True, error=why)  # fmt: skip

    @staticmethod
    def _copy(handle: SnapshotHandle, copies: list[tuple[Any, Any]]) -> None:
        try:
            for source, buffer in copies:
                buffer.copy_(source)
        finally:
            handle.copied.set()  # a failed copy is reported by the flusher; never hang training

    @staticmethod
    def _copy_on_device(handle: SnapshotHandle, copies: list[tuple[Any, Any]]) -> None:
        import torch

        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())  # the copies see the finished optimizer step
        with torch.cuda.stream(stream):
            for source, buffer in copies:
                buffer.copy_(source, non_blocking=True)
            event = torch.cuda.Event()
            event.record(stream)
        handle._device_event = event
        handle.copied.set()  # the host side is done queueing; the flusher syncs on the event

    def _flush_forever(self) -> None:
        while True:
            handle, snapshot, buffers = self._jobs.get()
            self._flush(handle, snapshot, buffers)

    def _flush(self, handle: SnapshotHandle, snapshot: TrainingState, buffers: _Buffers) -> None:
        index, self._written = self._written, self._written + 1
        written: Path | None = None
        level = self.levels[0]
        try:
            handle.copied.wait()
            if handle._device_event is not None:
                handle._device_event.synchronize()
            try:
                record = files.write(level.path, snapshot, {**self.meta, "level": level.name},
                                     durable=level.durable)  # fmt: skip
            finally:
                self._free.put(buffers)  # written or not, the next snapshot may use them
            written = Path(record.path)
            handle._add(replace(record, seconds=round(time.monotonic() - handle.started, 4)))
            files.retain(level.path, level.keep)
            for level in self.levels[1:]:
                if index % level.every:
                    continue
                record = files.copy(written, level.path, {**self.meta, "level": level.name},
                                    durable=level.durable)  # fmt: skip
                handle._add(replace(record, seconds=round(time.monotonic() - handle.started, 4)))
                files.retain(level.path, level.keep)
        except Exception as exc:  # disk full, a level gone: report it, keep training
            handle._add(_failed(handle, level.name, written, exc))
        finally:
            handle._finish()


def _failed(handle: SnapshotHandle, level: str, written: Path | None, exc: Exception) -> CheckpointRecord:
    return CheckpointRecord(
        step=handle.step,
        level=level,
        path=str(written or ""),
        bytes=0,
        seconds=round(time.monotonic() - handle.started, 4),
        completed_at=time.time(),
        error=f"{type(exc).__name__}: {exc}",
    )


_snapshotters: dict[tuple[Any, ...], Snapshotter] = {}
_lock = threading.Lock()


def snapshotter(key: tuple[Any, ...], make: Callable[[], Snapshotter]) -> Snapshotter:
    """The Snapshotter for ``key`` (plugin, target, params), made once: a plugin object is
    shared, but each job's buffers and flusher are its own."""
    with _lock:
        found = _snapshotters.get(key)
        if found is None:
            found = _snapshotters[key] = make()
        return found
