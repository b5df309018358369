"""The training loop: next-token cross-entropy, AdamW, gradient clipping, bf16 autocast on CUDA.

Parameters are kept in fp32 (the "master" weights) even where the model config says ``auto``
(bf16 on CUDA for serving): AdamW updates lose most of their bits in bf16. Compute runs under
bf16 autocast on CUDA for speed and in plain fp32 on CPU, where a run is bit-for-bit
reproducible from its seed -- and, through the checkpointer (``checkpointing``), from its
last checkpoint.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from agents.runtimes.model import Transformer, build_model
from agents.runtimes.train.checkpointing import STOP_WAIT_SECONDS, Checkpoints, Trainee, capture, restore
from agents.runtimes.train.config import ConfigError, TrainConfig
from agents.runtimes.train.data import TokenStream, load_tokens
from agents.runtimes.train.progress import Reporter
from agents.runtimes.train.stop import StopFlag
from plugins.types import CheckpointTarget

WEIGHT_DECAY = 0.1
BETAS = (0.9, 0.95)
MAX_GRAD_NORM = 1.0


@dataclass
class Outcome:
    """How a run ended: the last step finished, and the signal that stopped it early, if any."""

    step: int
    loss: float | None
    signal: int | None = None


def pick_device(requested: str) -> torch.device:
    """``auto`` is CUDA when torch sees a GPU, else the CPU; asking for CUDA without one is a config error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device", "cuda requested but torch sees no GPU; use --device auto or cpu")
    return torch.device(requested)


def make_optimizer(model: nn.Module, learning_rate: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (linears, embeddings) only; norms' gains are not shrunk."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=learning_rate, betas=BETAS)


def prepare(config: TrainConfig, device: torch.device) -> tuple[Transformer, TokenStream, int, int]:
    """Build the model and the data and resolve the defaults that depend on the model.

    Returns the model (fp32 master weights, train mode), the token stream, seqLen and seed.
    Everything a config can get wrong surfaces here as a :class:`ConfigError`.
    """
    try:
        model, model_config = build_model(config.model, "cpu")
    except (ValueError, OSError, KeyError) as exc:
        raise ConfigError("model", f"{exc}; fix model.source or model.config") from exc
    seq_len = config.seqLen or min(128, model_config.maxSeqLen)
    if seq_len > model_config.maxSeqLen:
        raise ConfigError(
            "seqLen", f"{seq_len} exceeds the model's maxSeqLen {model_config.maxSeqLen}; lower seqLen"
        )
    seed = config.seed if config.seed is not None else model_config.seed
    stream = load_tokens(config.data, model_config.vocabSize, seq_len, seed)
    master = torch.float64 if model_config.dtype == "float64" else torch.float32
    model = model.to(device=device, dtype=master)
    model.train()
    return model, stream, seq_len, seed


def autocast_for(device: torch.device, config: TrainConfig) -> torch.autocast | nullcontext:
    """bf16 autocast on CUDA unless the model config pins fp32/fp64; nothing on CPU."""
    pinned = config.model.get("config", {}).get("dtype") in ("float32", "float64")
    if device.type == "cuda" and not pinned:
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def train(
    config: TrainConfig,
    device: torch.device,
    reporter: Reporter,
    stop: StopFlag,
    target: CheckpointTarget | None = None,
) -> Outcome:
    """Run the optimizer steps left, reporting as it goes; returns early on a stop signal.

    With a checkpointer (``target`` from :func:`checkpointing.checkpoint_target`) it first
    resumes from the newest checkpoint (or ``resumeFrom``), saves every ``everySteps`` steps
    and at the last, and returns only once the last save is complete, so ``succeeded`` means
    the final state is on disk.
    """
    model, stream, seq_len, seed = prepare(config, device)
    torch.manual_seed(seed)
    batches = torch.Generator().manual_seed(seed)
    optimizer = make_optimizer(model, config.learningRate)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if stop.signal is not None:  # asked to stop while torch was loading: never announce a start
        return Outcome(step=0, loss=None, signal=stop.signal)
    trainee = Trainee(model=model, optimizer=optimizer, batches=batches, device=device)
    resumed = restore(config, target, trainee, reporter)
    checkpoints = Checkpoints(config, target, reporter)
    reporter.tokens_per_step = config.batchSize * seq_len
    chosen = {"checkpointer": checkpoints.name, "everySteps": checkpoints.every if checkpoints.name else None}
    reporter.log(
        f"training on {device} ({stream.origin}, {len(stream.tokens):,} tokens) "
        f"batch {config.batchSize} x seqLen {seq_len}, lr {config.learningRate:g}, seed {seed}"
        + (f", checkpointer {checkpoints.name} every {checkpoints.every} steps" if checkpoints.name else "")
        + (f", resumed from step {resumed}" if resumed else "")
    )
    reporter.start(
        params=sum(p.numel() for p in model.parameters()),
        resumed_from=resumed,
        device=str(device),
        seqLen=seq_len,
        batchSize=config.batchSize,
        seed=seed,
        **chosen,
    )
    loss_value: float | None = None
    for step in range(resumed + 1, config.steps + 1):
        inputs, targets = stream.batch(batches, config.batchSize, seq_len)
        inputs = inputs.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with autocast_for(device, config):
            logits = model(inputs)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        checkpoints.before_update()  # a save still copying tensors finishes before they change
        optimizer.step()
        if checkpoints.due(step):
            checkpoints.save(capture(trainee, step, config.batchSize, seq_len, final=step == config.steps))
        checkpoints.poll()
        if reporter.wants(step) or stop.signal is not None:
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"loss became {loss_value} at step {step}; lower learningRate")
            if reporter.wants(step):
                reporter.progress(step, loss_value, checkpoints.take_stall())
        if stop.signal is not None and step < config.steps:
            if not checkpoints.wait(STOP_WAIT_SECONDS):
                reporter.log(f"stopping with a checkpoint still in flight after {STOP_WAIT_SECONDS:.0f}s")
            return Outcome(step=step, loss=loss_value, signal=stop.signal)
    checkpoints.wait()  # the final checkpoint is complete before the run says it succeeded
    return Outcome(step=max(config.steps, resumed), loss=loss_value)
