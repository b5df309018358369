"""Built-in checkpointer plugins: ``blocking`` (the baseline), ``lazy-async`` (DataStates-LLM)
and ``memory-snapshot`` (host-memory snapshots for the fastest restart).

All three write the same checkpoint format (``checkpoint_files``: shards plus a manifest
written last, each shard checksummed, published by an atomic rename) and restore the newest
checkpoint that verifies, over every level they write. They differ in when the training loop
waits:

==================  ======================================  ==========================================
name                levels                                  the loop waits for
==================  ======================================  ==========================================
blocking            one (``path``)                          the whole ``torch.save`` and its fsync
lazy-async          local, then ``durablePath`` if given    only an unfinished copy to host buffers
memory-snapshot     tmpfs (keep K), durable every M-th      only an unfinished copy to host buffers
==================  ======================================  ==========================================

A job's directories are the runtime's (``CheckpointTarget``: node-local under the agent's
state directory, named after the job and its uid); ``path`` and ``durablePath`` move them,
keeping that last name, so one shared directory can serve many jobs. torch is imported only
by the modules that touch tensors, so the control plane loads these plugins without it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from plugins import checkpoint_files as files
from plugins.checkpoint_snapshot import Level, Snapshotter, snapshotter
from plugins.hookspecs import hookimpl
from plugins.types import CheckpointHandle, CheckpointTarget, FinishedSave, TrainingState

# tmpfs: host memory that outlives the process. World-writable /dev/shm is why every level
# directory is made private and checked to be ours (checkpoint_files.make_level).
MEMORY_DIR = "/dev/shm/flotilla-checkpoints"  # noqa: S108


def _absolute(value: str | None) -> str | None:
    if value is not None and not value.startswith("/"):
        raise ValueError("must be an absolute path on the node, such as /mnt/checkpoints")
    if value is not None and ("\x00" in value or ".." in Path(value).parts):
        raise ValueError("must be a plain absolute path, without .. or NUL characters")
    return value


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(
        default=None,
        max_length=1024,
        description="Directory for this level on the node (absolute); the job's own sub-directory "
        "is made under it. Default: the agent's state directory.",
    )
    keep: int = Field(default=3, ge=1, le=1000, description="Complete checkpoints kept at this level.")

    _absolute = field_validator("path")(classmethod(lambda cls, v: _absolute(v)))


class BlockingParams(_Common):
    pass


class _Async(_Common):
    durablePath: str | None = Field(
        default=None,
        max_length=1024,
        description="Second level (absolute): a shared directory that outlives the node, so a job "
        "rescheduled elsewhere resumes from it.",
    )
    durableKeep: int = Field(default=3, ge=1, le=1000, description="Checkpoints kept at the durable level.")
    hostBuffers: int = Field(
        default=1,
        ge=1,
        le=4,
        description="Sets of host buffers, each the size of the training state: the host memory "
        "snapshots may hold at once.",
    )
    whenBusy: Literal["wait", "skip"] = Field(
        default="wait",
        description="A checkpoint due while every buffer set is still being flushed: wait for "
        "one (training stalls) or skip this checkpoint (reported in the job's status).",
    )

    _durable = field_validator("durablePath")(classmethod(lambda cls, v: _absolute(v)))

    @model_validator(mode="after")
    def _two_places(self) -> _Async:
        if (
            self.durablePath is not None
            and self.path is not None
            and Path(self.durablePath) == Path(self.path)
        ):
            raise ValueError("durablePath must differ from path: the durable level is a second copy")
        return self


class LazyAsyncParams(_Async):
    pass


class MemorySnapshotParams(_Async):
    path: str | None = Field(
        default=None,
        max_length=1024,
        description=f"Host-memory level (absolute, on tmpfs). Default: {MEMORY_DIR}.",
    )
    keep: int = Field(default=2, ge=1, le=100, description="Snapshots kept in host memory (K).")
    durableEvery: int = Field(
        default=5, ge=1, le=100000, description="Every M-th snapshot is also written to the durable level."
    )


def _place(base: str | None, default: str) -> Path:
    """``default`` (the runtime's per-job directory) moved under ``base`` when one is given."""
    job = Path(default)
    return job if base is None else Path(base) / job.name


def _meta(plugin: str, target: CheckpointTarget) -> dict[str, Any]:
    return {"owner": target.owner, "plugin": plugin}


def _restore(levels: list[Path], target: CheckpointTarget) -> TrainingState | None:
    """The newest checkpoint that verifies and loads; each one passed over is noted."""

    def skipped(path: Path, why: str) -> None:
        target.rejected.append((str(path), why))

    started = time.monotonic()
    for found in files.verified(levels, skipped):
        try:
            return files.load(found, started)
        except Exception as exc:  # checksums match but torch cannot read it: still not loadable
            skipped(found.path, f"unloadable ({type(exc).__name__}: {exc})")
    return None


class Blocking:
    name: ClassVar[str] = "blocking"
    kind: ClassVar[str] = "checkpointer"
    description: ClassVar[str] = (
        "torch.save of the whole training state at each checkpoint step, fsynced and renamed into "
        "place before training goes on: the baseline."
    )
    Params: ClassVar[type[BaseModel]] = BlockingParams

    def _dir(self, target: CheckpointTarget, params: BlockingParams) -> Path:
        return _place(params.path, target.durable_dir or target.local_dir)

    def save(self, *, state: TrainingState, target: CheckpointTarget, params: BaseModel) -> CheckpointHandle:
        assert isinstance(params, BlockingParams)
        level = self._dir(target, params)
        files.clear_staging(level)
        record = files.write(level, state, {**_meta(self.name, target), "level": "local"})
        files.retain(level, params.keep, protect=Path(record.path))
        return FinishedSave(step=state.step, record=record)

    def restore(self, *, target: CheckpointTarget, params: BaseModel) -> TrainingState | None:
        assert isinstance(params, BlockingParams)
        return _restore([self._dir(target, params)], target)


class _Snapshotting:
    """What lazy-async and memory-snapshot share: a Snapshotter per job, made on first save."""

    name: ClassVar[str]

    def levels(self, target: CheckpointTarget, params: Any) -> list[Level]:
        raise NotImplementedError

    def save(self, *, state: TrainingState, target: CheckpointTarget, params: BaseModel) -> CheckpointHandle:
        key = (self.name, target.owner, target.local_dir, target.durable_dir, params.model_dump_json())
        made = snapshotter(key, lambda: Snapshotter(self.levels(target, params), _meta(self.name, target),
                                                    params.hostBuffers, params.whenBusy))  # fmt: skip
        return made.save(state)

    def restore(self, *, target: CheckpointTarget, params: BaseModel) -> TrainingState | None:
        return _restore([level.path for level in self.levels(target, params)], target)


class LazyAsync(_Snapshotting):
    name: ClassVar[str] = "lazy-async"
    kind: ClassVar[str] = "checkpointer"
    description: ClassVar[str] = (
        "DataStates-style: copies the state to host buffers while the next forward and backward "
        "run, waits only before the optimizer would change an uncopied tensor, and flushes to "
        "local then durable storage in the background; a manifest with checksums is written last."
    )
    Params: ClassVar[type[BaseModel]] = LazyAsyncParams

    def levels(self, target: CheckpointTarget, params: Any) -> list[Level]:
        local = _place(params.path, target.local_dir)
        levels = [Level("local", local, params.keep)]
        if params.durablePath or target.durable_dir:
            durable = _place(params.durablePath, target.durable_dir or target.local_dir)
            if durable != local:  # one directory is one level, not two copies of each checkpoint
                levels.append(Level("durable", durable, params.durableKeep))
        return levels


class MemorySnapshot(_Snapshotting):
    name: ClassVar[str] = "memory-snapshot"
    kind: ClassVar[str] = "checkpointer"
    description: ClassVar[str] = (
        "Keeps the last K snapshots in host memory (tmpfs, so they outlive the training process) "
        "for the fastest restart, and writes every M-th to durable storage; copied lazily like "
        "lazy-async."
    )
    Params: ClassVar[type[BaseModel]] = MemorySnapshotParams

    def levels(self, target: CheckpointTarget, params: Any) -> list[Level]:
        memory = Path(params.path or MEMORY_DIR) / Path(target.local_dir).name
        durable = _place(params.durablePath, target.durable_dir or target.local_dir)
        return [
            Level("memory", memory, params.keep, durable=False),
            Level("durable", durable, params.durableKeep, every=params.durableEvery),
        ]


@hookimpl
def register_checkpointers():
    return [Blocking(), LazyAsync(), MemorySnapshot()]
