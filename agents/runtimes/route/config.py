"""The router's config file: the Workload's ``spec.config`` as the control plane wrote it.

Every key is checked at start-up and a bad one stops the router naming it, because a
router that guessed would route by the wrong tokens (``model``), the wrong block size,
or let everyone in (``apiKeys``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.runtimes import plugin_choice
from common import apikeys
from plugins.prefix_hash import BLOCK_SIZE

CONFIG_KEYS = {"model", "name", "cache", "apiKeys", "blockSize"}
# Without a cache section a router balances like a plain load balancer (the baseline).
DEFAULT_CACHE = {"plugin": "round-robin", "params": {}}
# Must equal the replicas' KV block size (agents/runtimes/serve/kvcache.DEFAULT_BLOCK_SIZE,
# not imported: that module imports torch), or the router's block hashes name other blocks.
DEFAULT_BLOCK_SIZE = BLOCK_SIZE
MAX_BLOCK_SIZE = 4096
DEFAULT_SOURCE = "builtin:tiny-llama"


@dataclass(frozen=True)
class RouterConfig:
    """What the router needs from its config, checked."""

    model: dict[str, Any]
    name: str
    cache: plugin_choice.PluginChoice
    api_keys: tuple[str, ...]
    block_size: int

    @property
    def source(self) -> str:
        """The model's source, which seeds the block-hash chain exactly as the replicas seed it."""
        return self.model.get("source") or DEFAULT_SOURCE


def parse_config(config: Any, where: str) -> RouterConfig:
    """A :class:`RouterConfig` from the decoded JSON, or SystemExit naming the bad key."""
    if not isinstance(config, dict):
        raise SystemExit(f"{where} must be a JSON object")
    unknown = set(config) - CONFIG_KEYS
    if unknown:
        raise SystemExit(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(CONFIG_KEYS)}")
    model = config.get("model")
    if not isinstance(model, dict):
        raise SystemExit(f"{where}: model must be an object ({{source, config, tokenizer}})")
    for key in ("source", "tokenizer"):
        if model.get(key) is not None and not isinstance(model[key], str):
            raise SystemExit(f"{where}: model.{key} must be a string")
    source = model.get("source") or DEFAULT_SOURCE
    name = config.get("name")
    if name is not None and not isinstance(name, str):
        raise SystemExit(f"{where}: name must be a string (empty: the model's source, as the replicas do)")
    block_size = config.get("blockSize", DEFAULT_BLOCK_SIZE)
    if (
        isinstance(block_size, bool)
        or not isinstance(block_size, int)
        or not 1 <= block_size <= MAX_BLOCK_SIZE
    ):
        raise SystemExit(f"{where}: blockSize must be an integer in [1, {MAX_BLOCK_SIZE}]")
    keys = config.get("apiKeys") or []
    if (
        not isinstance(keys, list)
        or len(keys) > apikeys.MAX_KEYS
        or not all(isinstance(k, str) and apikeys.DIGEST.match(k) for k in keys)
    ):
        raise SystemExit(
            f"{where}: apiKeys must be a list of at most {apikeys.MAX_KEYS} 'sha256:<64 hex>' digests "
            "(the control plane writes digests, never plain keys)"
        )
    section = config.get("cache")
    try:
        cache = plugin_choice.resolve("cache", DEFAULT_CACHE if section is None else section, "cache")
    except plugin_choice.PluginChoiceError as exc:
        raise SystemExit(f"{where}: {exc}; {exc.fix}") from None
    return RouterConfig(
        model=model, name=name or source, cache=cache, api_keys=tuple(keys), block_size=block_size
    )


def load_config(path: str) -> RouterConfig:
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"cannot read --config {path}: {exc}") from None
    return parse_config(config, f"--config {path}")
