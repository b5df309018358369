"""The on-disk form of a checkpoint, shared by every built-in checkpointer.

A checkpoint is one directory, ``step-00000120``, inside a *level* directory (host memory on
tmpfs, node-local disk, or a durable shared directory). It holds one file per shard
(``model.pt``, ``optimizer.pt``, ``extra.pt``: each a ``torch.save`` of part of the state)
and ``manifest.json``, written last, which names every shard with its size and SHA-256.

Why this shape: a training process can die at any instant (kill -9, OOM, a lost node). The
directory is built under a hidden temporary name, every file is fsynced, and only then is it
renamed into place and its parent fsynced, so a checkpoint either exists whole under its
final name or not at all. Readers trust nothing: :func:`verify` re-reads every shard and
compares size and checksum against the manifest before anything is loaded, and
:func:`newest` skips (and reports) whatever does not verify. torch is imported only where
tensors are written or read, so the control plane can import this module without it.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import shutil
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from plugins.types import CheckpointRecord, TrainingState

FORMAT = "flotilla-checkpoint/1"
MANIFEST = "manifest.json"
MANIFEST_MAX_BYTES = 1 << 20  # a manifest names a few shards; anything larger is not ours
SHARDS = ("model", "optimizer", "extra")
_NAME = re.compile(r"^step-(\d{8,})$")
_CHUNK = 4 << 20

# Staging directories this process is writing right now: clear_staging must not remove them
# (two Snapshotters of one job share its levels; a second one starting clears the level).
_in_flight: set[Path] = set()
_in_flight_lock = threading.Lock()


class CorruptCheckpoint(Exception):
    """A checkpoint directory that must not be loaded; the message says why."""


@dataclass(frozen=True)
class Found:
    """A complete, verified checkpoint and what its manifest says."""

    path: Path
    step: int
    manifest: dict[str, Any]

    @property
    def bytes(self) -> int:
        return sum(int(shard["bytes"]) for shard in self.manifest["shards"])


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def step_of(path: Path) -> int | None:
    """The step a checkpoint directory's name says, or None for anything else in a level."""
    match = _NAME.match(path.name)
    return int(match.group(1)) if match else None


class _HashingWriter:
    """A file that hashes what passes through it, so a shard is checksummed while it is
    written instead of read back afterwards."""

    def __init__(self, handle: BinaryIO):
        self.handle = handle
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


def make_level(path: Path) -> Path:
    """Make ``path`` (and each missing parent) with owner-only permissions, and refuse one that
    another user owns or could swap for their own: checkpoints are loaded back into a training
    process, so nobody else may plant one, and they hold the model, so nobody else may read one.

    A missing parent is made private too (``/dev/shm/flotilla-checkpoints`` made 0755 by one
    user would otherwise lock every other user out of it). The parent must not let anyone else
    rename ``path`` away: it must be ours or root's, and not writable by all without the sticky
    bit (as /dev/shm and /tmp have).
    """
    missing = []
    for parent in (path, *path.parents):
        if os.path.lexists(parent):
            break
        missing.append(parent)
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            pass  # made meanwhile by another save; checked below like any other
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise PermissionError(f"{path} is not a plain directory (a symlink or a file); choose another path")
    if info.st_uid != os.getuid():
        raise PermissionError(
            f"{path} belongs to uid {info.st_uid}, not to this process; choose another path"
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o700)  # ours but readable by others: the checkpoints hold the model
    above = os.stat(path.parent)
    if above.st_uid not in (0, os.getuid()) or (
        above.st_mode & stat.S_IWOTH and not above.st_mode & stat.S_ISVTX
    ):
        raise PermissionError(
            f"{path.parent} (uid {above.st_uid}, mode {stat.S_IMODE(above.st_mode):o}) lets another user "
            f"replace {path.name}; choose a path under a directory of your own"
        )
    return path


def _staging(level_dir: Path, final: Path) -> Path:
    """A new, empty staging directory for ``final``, registered as in flight until released."""
    staging = level_dir / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with _in_flight_lock:
        _in_flight.add(staging)
    try:
        staging.mkdir(mode=0o700)
    except BaseException:
        _released(staging)
        raise
    return staging


def _released(staging: Path) -> None:
    with _in_flight_lock:
        _in_flight.discard(staging)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def split_state(state: TrainingState) -> dict[str, Any]:
    """The shards of ``state``: model and optimizer apart (the large ones), the rest together."""
    return {
        "model": state.model,
        "optimizer": state.optimizer,
        "extra": {"step": state.step, "scheduler": state.scheduler, "rng": state.rng, "data": state.data},
    }


def join_state(parts: dict[str, Any]) -> TrainingState:
    extra = parts["extra"]
    return TrainingState(
        step=int(extra["step"]),
        model=parts["model"],
        optimizer=parts["optimizer"],
        scheduler=extra.get("scheduler", {}),
        rng=extra.get("rng", {}),
        data=extra.get("data", {}),
    )


def write(
    level_dir: Path, state: TrainingState, meta: dict[str, Any], *, durable: bool = True
) -> CheckpointRecord:
    """Write ``state`` as a complete checkpoint under ``level_dir``, atomically.

    ``meta`` goes into the manifest (owner, plugin, level). ``durable=False`` skips the
    fsyncs, for a level that does not survive the machine anyway (tmpfs).
    """
    import torch

    started = time.monotonic()
    final = make_level(level_dir) / checkpoint_name(state.step)
    with _building(level_dir, final) as staging:
        shards = []
        for name, part in split_state(state).items():
            with open(staging / f"{name}.pt", "wb") as handle:
                writer = _HashingWriter(handle)
                torch.save(part, writer)
                handle.flush()
                if durable:
                    os.fsync(handle.fileno())
            shards.append({"name": name, "file": f"{name}.pt", "bytes": writer.size,
                           "sha256": writer.digest.hexdigest()})  # fmt: skip
        _write_manifest(staging, state.step, shards, meta, durable)
        _publish(staging, final, durable)
    return _record(final, state.step, shards, meta, time.monotonic() - started)


@contextmanager
def _building(level_dir: Path, final: Path) -> Iterator[Path]:
    """A staging directory for ``final``'s checkpoint: removed if the build fails, and no
    longer counted as in flight once the build is done either way."""
    staging = _staging(level_dir, final)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        _released(staging)


def copy(source: Path, level_dir: Path, meta: dict[str, Any], *, durable: bool = True) -> CheckpointRecord:
    """Copy the verified checkpoint ``source`` into ``level_dir`` (the next level down), checking
    each shard's checksum as it is read, so a shard damaged on the way is never published."""
    started = time.monotonic()
    manifest = read_manifest(source)
    step = int(manifest["step"])
    final = make_level(level_dir) / checkpoint_name(step)
    with _building(level_dir, final) as staging:
        for shard in manifest["shards"]:
            digest = hashlib.sha256()
            size = 0
            with open(source / shard["file"], "rb") as src, open(staging / shard["file"], "wb") as dst:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    dst.write(chunk)
                dst.flush()
                if durable:
                    os.fsync(dst.fileno())
            if size != shard["bytes"] or digest.hexdigest() != shard["sha256"]:
                raise CorruptCheckpoint(f"{source}: {shard['file']} changed while it was copied")
        _write_manifest(staging, step, manifest["shards"], {**manifest, **meta}, durable)
        _publish(staging, final, durable)
    return _record(final, step, manifest["shards"], meta, time.monotonic() - started)


def _write_manifest(
    staging: Path, step: int, shards: list[dict[str, Any]], meta: dict[str, Any], durable: bool
) -> None:
    manifest = {k: v for k, v in meta.items() if k not in ("format", "step", "shards", "createdAt")}
    manifest.update(format=FORMAT, step=step, shards=shards, createdAt=time.time())
    with open(staging / MANIFEST, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, sort_keys=True)
        handle.flush()
        if durable:
            os.fsync(handle.fileno())


def _publish(staging: Path, final: Path, durable: bool) -> None:
    """Rename the finished staging directory into place; an older copy of the same step (a
    run resumed from before it) is moved aside first and removed after."""
    if durable:
        _fsync_dir(staging)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(final, old)
    os.rename(staging, final)
    if durable:
        _fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _record(
    path: Path, step: int, shards: list[dict[str, Any]], meta: dict[str, Any], seconds: float
) -> CheckpointRecord:
    return CheckpointRecord(
        step=step,
        level=str(meta.get("level", "local")),
        path=str(path),
        bytes=sum(int(s["bytes"]) for s in shards),
        seconds=round(seconds, 4),
        completed_at=time.time(),
    )


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the checkpoint at ``path``, checked for shape (not yet for checksums)."""
    file = path / MANIFEST
    try:
        if file.stat().st_size > MANIFEST_MAX_BYTES:
            raise CorruptCheckpoint(f"{file}: larger than {MANIFEST_MAX_BYTES} bytes")
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CorruptCheckpoint(f"{path}: no {MANIFEST} (the save never finished)") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CorruptCheckpoint(f"{file}: unreadable ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CorruptCheckpoint(f"{file}: not a {FORMAT} manifest")
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not all(isinstance(s, dict) for s in shards):
        raise CorruptCheckpoint(f"{file}: shards must be a list of objects")
    if sorted(str(s.get("name")) for s in shards) != sorted(SHARDS):
        raise CorruptCheckpoint(f"{file}: shards must be exactly {', '.join(SHARDS)}")
    for shard in shards:
        # Each shard is the file its name says, in this directory: never ../ or another shard's.
        if shard.get("file") != f"{shard['name']}.pt":
            raise CorruptCheckpoint(
                f"{file}: shard {shard['name']!r} names {shard.get('file')!r}, not {shard['name']}.pt"
            )
        if (
            type(shard.get("bytes")) is not int
            or shard["bytes"] < 0
            or not isinstance(shard.get("sha256"), str)
        ):
            raise CorruptCheckpoint(f"{file}: shard {shard['name']!r} lacks bytes or sha256")
    if type(manifest.get("step")) is not int or manifest["step"] != step_of(path):
        raise CorruptCheckpoint(f"{file}: says step {manifest.get('step')!r}, the directory another")
    return manifest


def _digest(file: Path) -> tuple[int, str]:
    """(size, SHA-256) of ``file``, hashed straight from a memory map: no copy into Python
    buffers, and hashlib drops the GIL while it hashes, so shards hash in parallel."""
    with open(file, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            return 0, hashlib.sha256().hexdigest()
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            return size, hashlib.sha256(mapped).hexdigest()


def verify(path: Path) -> Found:
    """Check every shard of the checkpoint at ``path`` against its manifest; raise
    :class:`CorruptCheckpoint` naming the first thing that does not match. The shards are
    hashed in parallel: verifying is most of a restore's time."""
    manifest = read_manifest(path)
    shards = manifest["shards"]
    with ThreadPoolExecutor(max_workers=len(shards)) as pool:
        digests = list(pool.map(lambda shard: _checked_digest(path / shard["file"]), shards))
    for shard, (size, digest) in zip(shards, digests, strict=True):
        file = path / shard["file"]
        if size != shard["bytes"]:
            raise CorruptCheckpoint(f"{file}: {size} bytes, the manifest says {shard['bytes']}")
        if digest != shard["sha256"]:
            raise CorruptCheckpoint(f"{file}: checksum does not match the manifest")
    return Found(path=path, step=int(manifest["step"]), manifest=manifest)


def _checked_digest(file: Path) -> tuple[int, str]:
    try:
        return _digest(file)
    except (OSError, ValueError) as exc:
        raise CorruptCheckpoint(f"{file}: unreadable ({getattr(exc, 'strerror', None) or exc})") from None


def load(found: Found, started: float | None = None) -> TrainingState:
    """The state of a verified checkpoint, read with ``weights_only`` (no pickled code runs);
    its ``origin`` says where it came from, ``seconds`` counting from ``started`` (a
    ``time.monotonic()`` taken before the search began) or from here."""
    import torch

    began = time.monotonic() if started is None else started
    parts = {
        shard["name"]: torch.load(found.path / shard["file"], map_location="cpu", weights_only=True)
        for shard in found.manifest["shards"]
    }
    state = join_state(parts)
    created = found.manifest.get("createdAt")
    state.origin = CheckpointRecord(
        step=found.step,
        level=str(found.manifest.get("level", "local")),
        path=str(found.path),
        bytes=found.bytes,
        seconds=round(time.monotonic() - began, 4),
        completed_at=float(created) if isinstance(created, int | float) else 0.0,
    )
    return state


def listing(level_dir: Path) -> list[Path]:
    """The checkpoint directories of a level, newest step first (complete or not: see verify)."""
    try:
        entries = [p for p in level_dir.iterdir() if p.is_dir() and step_of(p) is not None]
    except OSError:  # not there yet, not a directory, not readable: no checkpoint there to use
        return []
    return sorted(entries, key=lambda p: step_of(p) or 0, reverse=True)


def verified(levels: list[Path], skipped: Callable[[Path, str], None]) -> Iterator[Found]:
    """The checkpoints over ``levels`` that verify, newest first (on a tie, the first level's);
    ``skipped(path, reason)`` hears about each one passed over. Lazy: each is verified only
    when the one before it is not wanted."""
    candidates = [
        (step_of(p) or 0, -rank, str(p)) for rank, level in enumerate(levels) for p in listing(level)
    ]
    for _, _, name in sorted(candidates, reverse=True):
        path = Path(name)
        try:
            yield verify(path)
        except CorruptCheckpoint as exc:
            skipped(path, str(exc))


def newest(levels: list[Path], skipped: Callable[[Path, str], None]) -> Found | None:
    """The newest checkpoint over ``levels`` that verifies (on a tie, the first level's);
    ``skipped(path, reason)`` hears about each one passed over."""
    return next(verified(levels, skipped), None)


def complete(level_dir: Path) -> Iterator[Path]:
    """The checkpoints of a level whose manifest reads, newest first (retention counts these;
    shards are not re-read, which would cost a full read of every checkpoint at each save)."""
    for path in listing(level_dir):
        try:
            read_manifest(path)
        except CorruptCheckpoint:
            continue
        yield path


def retain(level_dir: Path, keep: int, protect: Path | None = None) -> list[Path]:
    """Remove all but the newest ``keep`` complete checkpoints of a level; the removed ones.
    Incomplete or unreadable ones older than the oldest kept are removed too: a save that died
    left them. ``protect`` (the checkpoint just written) is always kept: a run resumed from an
    older step must not lose what it wrote to the higher-numbered leftovers of its last life."""
    if keep < 1:
        raise ValueError("keep must be at least 1: retention never removes the newest checkpoint")
    kept = list(complete(level_dir))[:keep]
    if protect is not None and protect not in kept and protect.exists():
        kept = [*kept[: keep - 1], protect]
    if not kept:
        return []
    oldest_kept = min(step_of(p) or 0 for p in kept)
    removed = [p for p in listing(level_dir) if p not in kept and (step_of(p) or 0) <= oldest_kept]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def clear_staging(level_dir: Path) -> list[Path]:
    """Remove the staging directories that saves which died left behind (none of them is a
    checkpoint: nothing was renamed into place). Run before a job's first save."""
    try:
        stale = [p for p in level_dir.iterdir() if p.name.startswith(".step-")]
    except OSError:  # no level yet, or a broken one: the save itself will say what is wrong
        return []
    with _in_flight_lock:
        stale = [p for p in stale if p not in _in_flight]  # this process is still writing those
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale
