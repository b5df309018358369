"""The training runtime's config file, checked field by field before any torch work.

The file mirrors a TrainingJob spec (``model``, ``data``, ``steps``, ``batchSize``) plus a few
knobs the spec leaves to defaults. Every problem becomes a :class:`ConfigError` that names the
field and says how to fix it, because the message ends up in the Workload's status where an
operator reads it without the source at hand.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agents.runtimes.plugin_choice import PluginChoice

DEFAULT_LEARNING_RATE = 3e-4
DEFAULT_SEQ_LEN_CAP = 128
# TrainingJob fields the runtime does not use but accepts, so the agent may pass the spec through.
PASSED_THROUGH = frozenset({"resources", "policies", "cluster"})
KNOWN = frozenset(
    {"model", "data", "steps", "batchSize", "seqLen", "learningRate", "seed", "checkpoint", "resumeFrom"}
)
RESUME_FROM_MAX_CHARS = 1024


class ConfigError(ValueError):
    """A bad config: ``field`` is the dotted path of the culprit, the message says the fix."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


@dataclass(frozen=True)
class TrainConfig:
    """A validated training config. ``seqLen`` and ``seed`` may be None until the model is known."""

    model: dict[str, Any]
    data: dict[str, Any]
    steps: int
    batchSize: int
    seqLen: int | None = None
    learningRate: float = DEFAULT_LEARNING_RATE
    seed: int | None = None
    checkpoint: dict[str, Any] | None = None
    # The checkpointer plugin checkpoint.plugin names, resolved on this node; the loop saves
    # and restores through it (agents/runtimes/train/checkpointing.py).
    checkpointer: PluginChoice | None = None
    # A checkpoint directory (another job's step-NNNNNNNN) to start from while this job has
    # none of its own; checked for shape here, verified against its manifest at start.
    resumeFrom: str | None = None
    warnings: list[str] = field(default_factory=list)


def load_config(path: str | Path) -> TrainConfig:
    """Read and validate the JSON config file at ``path``."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {path} ({exc.strerror}); pass an existing file") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError("--config", f"{path} is not valid JSON ({exc}); fix the file") from exc
    return parse_config(raw)


def parse_config(raw: Any) -> TrainConfig:
    """Validate a decoded config object; unknown top-level fields are warnings, not errors."""
    if not isinstance(raw, dict):
        raise ConfigError("config", "must be a JSON object with model, data, steps and batchSize")
    warnings = [
        f"{name}: unknown field ignored; known fields are {', '.join(sorted(KNOWN))}"
        for name in sorted(set(raw) - KNOWN - PASSED_THROUGH)
    ]
    checkpoint = _checkpoint(raw.get("checkpoint"))
    checkpointer = _checkpointer(checkpoint)
    if checkpoint is not None and checkpointer is None:
        warnings.append(
            "checkpoint: names no checkpointer plugin, so nothing is saved and a restarted job "
            "starts again from step 0; set checkpoint.plugin (the control plane writes it from "
            "checkpoint.policy)"
        )
    data = _source(raw, "data")
    _check_data_source(data["source"])
    return TrainConfig(
        model=_source(raw, "model"),
        data=data,
        steps=_positive_int(raw, "steps", required=True),
        batchSize=_positive_int(raw, "batchSize", required=True),
        seqLen=_positive_int(raw, "seqLen", required=False),
        learningRate=_learning_rate(raw.get("learningRate", DEFAULT_LEARNING_RATE)),
        seed=_seed(raw.get("seed")),
        checkpoint=checkpoint,
        checkpointer=checkpointer,
        resumeFrom=_resume_from(raw.get("resumeFrom")),
        warnings=warnings,
    )


def _source(raw: dict[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name)
    example = '"builtin:tiny-llama"' if name == "model" else '"builtin:synthetic" or "path:/data/tokens.bin"'
    if not isinstance(value, dict):
        raise ConfigError(name, f'missing or not an object; give {{"source": {example}, "config": {{...}}}}')
    source = value.get("source")
    if not isinstance(source, str) or not source.strip():
        raise ConfigError(f"{name}.source", f"missing or empty; set it to {example}")
    config = value.get("config", {})
    if not isinstance(config, dict):
        raise ConfigError(f"{name}.config", "must be an object (or left out for the defaults)")
    return {"source": source.strip(), "config": dict(config)}


def _check_data_source(source: str) -> None:
    """Fails fast (before torch loads) on a source no loader handles; the file itself is read later."""
    kind, _, name = source.partition(":")
    if kind == "builtin" and name != "synthetic":
        raise ConfigError("data.source", f"unknown builtin {name!r}; the only builtin is builtin:synthetic")
    if kind not in ("builtin", "path") or not name:
        raise ConfigError(
            "data.source", f"unknown source {source!r}; use builtin:synthetic or path:/file.txt|/file.bin"
        )
    if kind == "path" and Path(name).suffix.lower() not in (".txt", ".bin"):
        raise ConfigError("data.source", f"{name}: unsupported file type; use a .txt or .bin token file")


def _positive_int(raw: dict[str, Any], name: str, required: bool) -> int | None:
    if name not in raw or raw[name] is None:
        if required:
            raise ConfigError(name, "missing; set it to an integer >= 1")
        return None
    value = raw[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(name, f"must be an integer >= 1 (got {value!r}); set it to a positive count")
    return value


def _learning_rate(value: Any) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value <= 0 or value > 1:
        raise ConfigError(
            "learningRate", f"must be a number in (0, 1] (got {value!r}); 3e-4 is a safe default"
        )
    return float(value)


def _seed(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise ConfigError(
            "seed", f"must be a non-negative integer (got {value!r}); leave it out for the default"
        )
    return value


def _resume_from(value: Any) -> str | None:
    """Only the shape: whether the directory exists and verifies is checked when it is used,
    which is only while the job has no checkpoint of its own (so a restarted job does not
    fail because the checkpoint it started from was retired since)."""
    if value is None:
        return None
    example = "/var/lib/flotilla/checkpoints/other-job/step-00000100"
    if not isinstance(value, str) or not value.startswith("/") or "\x00" in value:
        raise ConfigError(
            "resumeFrom",
            f"must be an absolute path of a checkpoint directory (got {value!r}), such as {example}",
        )
    if len(value) > RESUME_FROM_MAX_CHARS:
        raise ConfigError("resumeFrom", f"longer than {RESUME_FROM_MAX_CHARS} characters; use a shorter path")
    return value


def _checkpoint(value: Any) -> dict[str, Any] | None:
    """Checks the checkpoint section: the TrainingJob's (policy, everySteps), plus the plugin
    and params the control plane resolved the policy to (controllers/workload_config.py)."""
    if value is None or value == {}:
        return None
    if not isinstance(value, dict):
        raise ConfigError("checkpoint", 'must be an object such as {"policy": "NAME", "everySteps": 100}')
    unknown = sorted(set(value) - {"policy", "everySteps", "plugin", "params"})
    if unknown:
        known = "policy, everySteps, plugin and params"
        raise ConfigError(f"checkpoint.{unknown[0]}", f"unknown field; only {known} are allowed")
    policy = value.get("policy")
    if policy is not None and (not isinstance(policy, str) or not policy):
        raise ConfigError("checkpoint.policy", "must be the name of a checkpointer Policy")
    every = value.get("everySteps", 100)
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ConfigError("checkpoint.everySteps", f"must be an integer >= 1 (got {every!r})")
    return dict(value)


def _checkpointer(checkpoint: dict[str, Any] | None) -> PluginChoice | None:
    """The checkpointer ``checkpoint.plugin`` names, from this node's plugin registry.

    Imported here, not at the top: loading the registry imports every installed plugin,
    which a config without a checkpointer should not wait for.
    """
    if checkpoint is None or "plugin" not in checkpoint:
        return None
    from agents.runtimes.plugin_choice import PluginChoiceError, resolve

    try:
        return resolve("checkpointer", checkpoint, "checkpoint")
    except PluginChoiceError as exc:
        raise ConfigError(exc.field, f"{exc.message.removeprefix(exc.field + ': ')}; {exc.fix}") from None
