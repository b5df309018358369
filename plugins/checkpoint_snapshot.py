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
as the plugin's ``whenBusy`` says, and the skip is reported as a record of its own. A process
keeps at most ``MAX_SNAPSHOTTERS`` of them; the least recently used one beyond that is closed
(its flusher finishes what it holds, then its buffers are let go).
"""

from __future__ import annotations

import copy as _copy
import queue
import threading
import time
from collections import OrderedDict
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
        self._copy_error: BaseException | None = None  # the copy failed: the buffers hold garbage

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._finished.wait(timeout)

    def before_update(self) -> None:
        self.copied.wait()  # on CUDA, set as soon as the copies are queued
        if self._device_event is not None:
            import torch

            torch.cuda.current_stream().wait_event(self._device_event)  # the device waits, not the host

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


_IMMUTABLE = (int, float, complex, str, bytes, bool, type(None))


def _copy_tree(value: Any, key: tuple[Any, ...], buffers: _Buffers, copies: list[tuple[Any, Any]]) -> Any:
    """``value`` with every tensor replaced by its host buffer (allocated on first use, reused
    after); the (source, buffer) pairs to copy are appended to ``copies``. Containers are
    rebuilt and other mutable leaves deep-copied, so the snapshot is the state at save time
    even when the loop changes its dicts in place afterwards."""
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
        if isinstance(value, list):
            return items
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)  # namedtuples too
    if isinstance(value, _IMMUTABLE):
        return value
    return _copy.deepcopy(value)  # a numpy array, a set: small, and the loop may change it


def _failed(
    handle: SnapshotHandle, level: str, exc: BaseException | str, *, skipped: bool = False
) -> CheckpointRecord:
    error = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return CheckpointRecord(
        step=handle.step,
        level=level,
        path="",
        bytes=0,
        seconds=round(time.monotonic() - handle.started, 4),
        completed_at=time.time(),
        error=error,
        skipped=skipped,
    )


_STOP = None  # put on the job queue by close(): the flusher ends after what it already holds


class Snapshotter:
    """The buffers and the flusher of one job's snapshots (one per checkpointer per target)."""

    def __init__(self, levels: list[Level], meta: dict[str, Any], buffers: int, when_busy: str):
        if not levels:
            raise ValueError("a Snapshotter needs at least one level")
        if buffers < 1:
            raise ValueError("a Snapshotter needs at least one set of host buffers")
        if when_busy not in ("wait", "skip"):
            raise ValueError(f"whenBusy must be wait or skip, not {when_busy!r}")
        self.levels = levels
        self.meta = meta
        self.when_busy = when_busy
        self._free: queue.Queue[_Buffers] = queue.Queue()
        for _ in range(buffers):
            self._free.put(_Buffers())
        self._jobs: queue.Queue[tuple[SnapshotHandle, TrainingState, _Buffers] | None] = queue.Queue()
        self._written = 0
        self._closed = False
        self._closing = threading.Lock()  # a save's queueing and close() do not interleave
        for level in levels:
            files.clear_staging(level.path)
        self._flusher = threading.Thread(target=self._flush_forever, name="checkpoint-flusher", daemon=True)
        self._flusher.start()

    @property
    def alive(self) -> bool:
        return self._flusher.is_alive() and not self._closed

    def save(self, state: TrainingState) -> SnapshotHandle:
        handle = SnapshotHandle(state.step)
        if self._closed:
            handle._add(
                _failed(handle, self.levels[0].name, "the checkpointer was closed; this save was not made")
            )
            handle._finish()
            return handle
        buffers = self._take_buffers(handle)
        if buffers is None:
            return handle
        copies: list[tuple[Any, Any]] = []
        try:
            snapshot = replace(
                state,
                model=_copy_tree(state.model, ("model",), buffers, copies),
                optimizer=_copy_tree(state.optimizer, ("optimizer",), buffers, copies),
                scheduler=_copy_tree(state.scheduler, ("scheduler",), buffers, copies),
                rng=_copy_tree(state.rng, ("rng",), buffers, copies),
                data=_copy_tree(state.data, ("data",), buffers, copies),
            )
            if any(source.device.type == "cuda" for source, _ in copies):
                self._copy_on_device(handle, copies)
            else:
                copier = threading.Thread(target=self._copy, args=(handle, copies), name="checkpoint-copy")
                copier.daemon = True
                copier.start()
        except Exception as exc:  # host memory for the buffers, a CUDA error: report it, keep training
            self._free.put(buffers)
            handle._add(_failed(handle, self.levels[0].name, exc))
            handle._finish()
            return handle
        with self._closing:
            if not self._closed:
                self._jobs.put((handle, snapshot, buffers))
                return handle
        handle.copied.wait()  # closed while copying: the flusher would never see this one
        if handle._device_event is not None:
            handle._device_event.synchronize()
        self._free.put(buffers)
        handle._add(
            _failed(handle, self.levels[0].name, "the checkpointer was closed; this save was not made")
        )
        handle._finish()
        return handle

    def _take_buffers(self, handle: SnapshotHandle) -> _Buffers | None:
        """A free buffer set, or None with the handle finished and a record saying why."""
        level = self.levels[0].name
        if self.when_busy == "skip":
            try:
                return self._free.get_nowait()
            except queue.Empty:
                why = "skipped: every host buffer set still holds an earlier checkpoint (whenBusy: skip)"
                handle._add(_failed(handle, level, why, skipped=True))
                handle._finish()
                return None
        while self.alive:  # whenBusy: wait, for a flush to hand its buffers back
            try:
                return self._free.get(timeout=0.5)
            except queue.Empty:
                continue
        # the flusher is gone (closed, or killed by something no except catches): never hang
        try:
            return self._free.get_nowait()  # and nothing would ever return a buffer set
        except queue.Empty:
            handle._add(_failed(handle, level, "the checkpoint flusher has stopped; this save was not made"))
            handle._finish()
            return None

    @staticmethod
    def _copy(handle: SnapshotHandle, copies: list[tuple[Any, Any]]) -> None:
        try:
            for source, buffer in copies:
                buffer.copy_(source)
        except BaseException as exc:
            handle._copy_error = exc  # the flusher reports it and writes nothing from these buffers
        finally:
            handle.copied.set()  # never hang training

    @staticmethod
    def _copy_on_device(handle: SnapshotHandle, copies: list[tuple[Any, Any]]) -> None:
        import torch

        device = next(source.device for source, _ in copies if source.device.type == "cuda")
        stream = torch.cuda.Stream(device=device)
        stream.wait_stream(torch.cuda.current_stream(device))  # the copies see the finished optimizer step
        with torch.cuda.stream(stream):
            for source, buffer in copies:
                buffer.copy_(source, non_blocking=True)
                if source.device.type == "cuda":
                    source.record_stream(stream)  # its memory is not reused before the copy ran
            event = torch.cuda.Event()
            event.record(stream)
        handle._device_event = event
        handle.copied.set()  # the host side is done queueing; the flusher syncs on the event

    def close(self) -> None:
        """Stop the flusher once it has flushed what it holds; later saves are refused."""
        with self._closing:
            if not self._closed:
                self._closed = True
                self._jobs.put(_STOP)

    def _flush_forever(self) -> None:
        while (job := self._jobs.get()) is not _STOP:
            try:
                self._flush(*job)
            except BaseException:  # noqa: S110 - _flush returned the buffers and finished the handle
                pass  # the flusher must outlive any one save, or every later save would wait forever

    def _flush(self, handle: SnapshotHandle, snapshot: TrainingState, buffers: _Buffers) -> None:
        index, self._written = self._written, self._written + 1
        held = True  # the buffers are ours until a level holds the snapshot (or none can)
        written: Path | None = None
        try:
            try:
                handle.copied.wait()
                if handle._device_event is not None:
                    handle._device_event.synchronize()
                if handle._copy_error is not None:
                    raise RuntimeError(f"copying the state to host buffers failed: {handle._copy_error}")
            except Exception as exc:
                handle._add(_failed(handle, self.levels[0].name, exc))
                return
            for rank, level in enumerate(self.levels):
                if rank and index % level.every and not snapshot.final:
                    continue  # not this one's turn at this level; the run's last state goes everywhere
                meta = {**self.meta, "level": level.name}
                try:
                    if written is None:  # the first level, or every level before failed: write
                        record = files.write(level.path, snapshot, meta, durable=level.durable)
                        written = Path(record.path)
                        self._free.put(buffers)  # the next snapshot may use them now
                        held = False
                    else:
                        record = files.copy(written, level.path, meta, durable=level.durable)
                    handle._add(replace(record, seconds=round(time.monotonic() - handle.started, 4)))
                    files.retain(level.path, level.keep, protect=Path(record.path))
                except Exception as exc:  # disk full, a level gone: report it, try the next, keep training
                    handle._add(_failed(handle, level.name, exc))
        finally:
            if held:
                self._free.put(buffers)
            handle._finish()


MAX_SNAPSHOTTERS = 8  # jobs a process checkpoints at once (a runtime has one; the bench a few)

_snapshotters: OrderedDict[tuple[Any, ...], Snapshotter] = OrderedDict()
_lock = threading.Lock()


def snapshotter(key: tuple[Any, ...], make: Callable[[], Snapshotter]) -> Snapshotter:
    """The Snapshotter for ``key`` (plugin, target, params), made once: a plugin object is
    shared, but each job's buffers and flusher are its own. Bounded: beyond
    ``MAX_SNAPSHOTTERS`` the least recently used is closed and forgotten."""
    with _lock:
        found = _snapshotters.get(key)
        if found is not None and not found.alive:
            del _snapshotters[key]
            found = None
        if found is None:
            found = _snapshotters[key] = make()
            while len(_snapshotters) > MAX_SNAPSHOTTERS:
                _, oldest = _snapshotters.popitem(last=False)
                oldest.close()
        _snapshotters.move_to_end(key)
        return found


def close_all() -> None:
    """Close every Snapshotter (a runtime at exit, the tests between cases)."""
    with _lock:
        while _snapshotters:
            _, oldest = _snapshotters.popitem(last=False)
            oldest.close()
