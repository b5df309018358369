"""The training loop's side of the checkpointer contract (``plugins.types``): where a job's
checkpoints go, what a checkpoint holds, restoring at start, and the saves in flight.

Why a module of its own: the loop should read as a training loop. Everything a checkpoint
adds -- the target from the agent's environment, the state captured after an optimizer step
and put back before the first one, the handles of saves still running in the background,
their records turned into events, and the time the loop spends blocked on them -- lives here.

A resumed run must continue *exactly* where the checkpoint was taken: besides model and
optimizer state a checkpoint holds torch's RNG state and the batch generator's state (the
data position), so on the CPU a run killed and resumed ends bit-identical to one that never
stopped. torch is imported only inside the functions that touch tensors, so a missing
``FLOTILLA_CHECKPOINT_DIR`` fails before the slow torch import.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agents.runtimes.train.config import ConfigError, TrainConfig
from agents.runtimes.train.progress import Reporter
from plugins import checkpoint_files as files
from plugins.types import CheckpointHandle, CheckpointRecord, CheckpointTarget, TrainingState

if TYPE_CHECKING:
    import torch
    from torch import nn


DIR_ENV = "FLOTILLA_CHECKPOINT_DIR"
OWNER_ENV = "FLOTILLA_CHECKPOINT_OWNER"
UNKNOWN_OWNER = "TrainingJob/<unknown>"
# How long a stop signal waits for a save in flight: the agent's grace period before SIGKILL
# may be shorter, in which case the newest complete checkpoint is simply an older one.
STOP_WAIT_SECONDS = 60.0
DEFAULT_EVERY_STEPS = 100


def checkpoint_target(
    config: TrainConfig, environ: Mapping[str, str] | None = None
) -> CheckpointTarget | None:
    """Where this job's checkpoints go, from the agent's environment; None without a checkpointer.

    No default directory on purpose: a default under the working directory would let a job
    restarted from another directory silently start again from step 0.
    """
    if config.checkpointer is None:
        return None
    env = os.environ if environ is None else environ
    local = env.get(DIR_ENV, "")
    if not local:
        raise ConfigError(
            "checkpoint",
            f"{DIR_ENV} is not set, so checkpointer {config.checkpointer.name!r} has nowhere to save; "
            f"the node agent sets it for a train Workload; when running the runtime by hand, export "
            f"{DIR_ENV}=/absolute/dir (the same directory on every restart of the job)",
        )
    if not local.startswith("/"):
        raise ConfigError(
            "checkpoint", f"{DIR_ENV}={local!r} is not absolute; set it to an absolute directory"
        )
    return CheckpointTarget(owner=env.get(OWNER_ENV) or UNKNOWN_OWNER, local_dir=local)


@dataclass
class Trainee:
    """The live objects a checkpoint captures and puts back."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    batches: torch.Generator  # draws the batch windows: its state is the data position
    device: torch.device


def capture(trainee: Trainee, step: int, batch_size: int, seq_len: int, final: bool = False) -> TrainingState:
    """The state after ``step``'s optimizer step. Model and optimizer tensors are the live ones,
    not copies: an asynchronous checkpointer copies them itself before the next update."""
    import torch

    rng: dict[str, Any] = {"torch": torch.get_rng_state(), "batches": trainee.batches.get_state()}
    if trainee.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(trainee.device)
    return TrainingState(
        step=step,
        model=trainee.model.state_dict(),
        optimizer=trainee.optimizer.state_dict(),
        rng=rng,
        data={"batchesDrawn": step, "batchSize": batch_size, "seqLen": seq_len},
        final=final,
    )


def apply(trainee: Trainee, state: TrainingState) -> None:
    """Put ``state`` back into the live objects (raises ValueError naming what does not fit)."""
    import torch

    try:
        trainee.model.load_state_dict(state.model)
        trainee.optimizer.load_state_dict(state.optimizer)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ValueError(f"it does not fit this model and optimizer ({exc})") from exc
    for key in ("torch", "batches"):
        if not isinstance(state.rng.get(key), torch.Tensor):
            raise ValueError(f"it holds no rng.{key} state, so the run could not continue exactly")
    torch.set_rng_state(state.rng["torch"])
    trainee.batches.set_state(state.rng["batches"])
    if trainee.device.type == "cuda" and isinstance(state.rng.get("cuda"), torch.Tensor):
        torch.cuda.set_rng_state(state.rng["cuda"], trainee.device)


def restore(
    config: TrainConfig, target: CheckpointTarget | None, trainee: Trainee, reporter: Reporter
) -> int:
    """Load the job's newest checkpoint, else ``resumeFrom``'s; the step resumed from (0: fresh).

    Emits ``checkpointRejected`` for each checkpoint the plugin passed over and ``restored``
    for the one loaded. ``resumeFrom`` is used only while the job has none of its own, so a
    job started from another one resumes from its own checkpoints after a crash.
    """
    started = time.monotonic()
    choice = config.checkpointer
    state: TrainingState | None = None
    if choice is not None and target is not None:
        state = choice.impl.restore(target=target, params=choice.params)
        _report_rejections(target, reporter)
        if state is not None:
            origin = state.origin
            level, path = (origin.level, origin.path) if origin is not None else ("unknown", "")
            try:
                apply(trainee, state)
            except ValueError as exc:
                raise ConfigError(
                    "checkpoint",
                    f"the job's checkpoint {path or state.step} cannot be loaded: {exc}; "
                    f"restore the job's original model config, or clear {target.local_dir}",
                ) from exc
            plugin = choice.name
    if state is None and config.resumeFrom is not None:
        state, level, path, plugin = _resume_from(config, trainee)
    if state is None:
        return 0
    seconds = round(time.monotonic() - started, 4)
    reporter.emit("restored", step=state.step, level=level, path=path, seconds=seconds, plugin=plugin)
    reporter.log(f"restored step {state.step} from {path or 'the checkpointer'} ({level}) in {seconds:.3f}s")
    return state.step


def _report_rejections(target: CheckpointTarget, reporter: Reporter) -> None:
    """One ``checkpointRejected`` per checkpoint the plugin passed over."""
    for path, reason in target.rejected:
        reporter.emit("checkpointRejected", path=path, reason=reason)
        reporter.log(f"checkpoint rejected: {path}: {reason}")
    target.rejected.clear()


def _resume_from(config: TrainConfig, trainee: Trainee) -> tuple[TrainingState, str, str, str]:
    """Verify and load ``resumeFrom``; anything wrong with it is a ConfigError naming the field."""
    path = Path(config.resumeFrom or "")
    fix = "name a complete checkpoint directory (step-NNNNNNNN with a manifest.json) or leave resumeFrom out"
    if not path.is_dir():
        raise ConfigError("resumeFrom", f"{path} is not a directory on this node; {fix}")
    try:
        found = files.verify(path)
        state = files.load(found)
    except files.CorruptCheckpoint as exc:
        raise ConfigError("resumeFrom", f"{exc}; {fix}") from exc
    except Exception as exc:  # a shard that verifies but does not unpickle as weights
        why = f"{type(exc).__name__}: {exc}"
        raise ConfigError("resumeFrom", f"{path} cannot be read ({why}); {fix}") from exc
    if state.step >= config.steps:
        raise ConfigError(
            "resumeFrom",
            f"{path} is at step {state.step} but steps is {config.steps}; raise steps above "
            f"{state.step} (a resumed job continues its step count)",
        )
    try:
        apply(trainee, state)
    except ValueError as exc:
        raise ConfigError("resumeFrom", f"{path} cannot be loaded: {exc}; {fix}") from exc
    manifest = found.manifest
    return state, str(manifest.get("level", "local")), str(path), str(manifest.get("plugin", "unknown"))


class Checkpoints:
    """The saves of one run: when one is due, the handles in flight, their events, the stall clock.

    ``stall`` accumulates the seconds the loop was blocked in ``save`` and ``before_update``;
    the loop takes it with each progress line, which is where a checkpointer's cost shows.
    """

    def __init__(self, config: TrainConfig, target: CheckpointTarget | None, reporter: Reporter):
        self.choice = config.checkpointer if target is not None else None
        self.target = target
        self.every = int((config.checkpoint or {}).get("everySteps", DEFAULT_EVERY_STEPS))
        self.last_step = config.steps
        self.reporter = reporter
        self.stall = 0.0
        self._pending: list[CheckpointHandle] = []  # saves not yet finished at every level
        self._unguarded: list[CheckpointHandle] = []  # saves begun since the last optimizer step

    @property
    def name(self) -> str | None:
        return self.choice.name if self.choice is not None else None

    def due(self, step: int) -> bool:
        """Every ``everySteps`` steps, and always the last: a finished job's final state is saved."""
        return self.choice is not None and (step % self.every == 0 or step == self.last_step)

    def save(self, state: TrainingState) -> None:
        """Start saving ``state`` (a blocking plugin finishes here; that time is stall)."""
        assert self.choice is not None and self.target is not None
        began = time.monotonic()
        handle = self.choice.impl.save(state=state, target=self.target, params=self.choice.params)
        self.stall += time.monotonic() - began
        self._pending.append(handle)
        self._unguarded.append(handle)

    def before_update(self) -> None:
        """Call right before ``optimizer.step()``: waits until the saves begun since the last
        update have copied the tensors the step is about to modify."""
        if not self._unguarded:
            return
        began = time.monotonic()
        for handle in self._unguarded:
            handle.before_update()
        self._unguarded.clear()
        self.stall += time.monotonic() - began

    def take_stall(self) -> float:
        """The stall seconds since the last call (one progress window)."""
        stall, self.stall = self.stall, 0.0
        return stall

    def poll(self) -> None:
        """Emit the levels reached (or failed) since the last poll; forget finished saves."""
        for handle in list(self._pending):
            done = handle.done  # read before records(): a save that finishes meanwhile is seen next time
            for record in handle.records():
                self._emit(record)
            if done:
                self._pending.remove(handle)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for every save in flight (at most ``timeout`` seconds in all), emitting their
        records; True when none is left."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for handle in list(self._pending):
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            handle.wait(left)
        self.poll()
        return not self._pending

    def _emit(self, record: CheckpointRecord) -> None:
        if record.error is not None or record.skipped:
            self.reporter.emit(
                "checkpointFailed",
                step=record.step,
                level=record.level,
                error=record.error or "skipped",
                skipped=record.skipped,
                plugin=self.name,
            )
            why = record.error or "skipped"
            self.reporter.log(f"checkpoint of step {record.step} at {record.level}: {why}")
            return
        self.reporter.emit(
            "checkpoint",
            step=record.step,
            level=record.level,
            path=record.path,
            bytes=record.bytes,
            seconds=record.seconds,
            completedAt=record.completed_at,
            plugin=self.name,
        )
        self.reporter.log(
            f"checkpoint of step {record.step} at {record.level}: {record.bytes / 1e6:.1f} MB in "
            f"{record.seconds:.3f}s ({record.path})"
        )
