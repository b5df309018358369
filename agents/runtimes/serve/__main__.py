"""``python -m agents.runtimes.serve --config FILE --host H --port N [--device auto|cpu|cuda]``.

The agent starts this as a Workload subprocess. It prints exactly one JSON line to stdout,
``{"event": "ready", "url": ...}``, once it serves (the agent watches for it); everything
else goes to stderr. SIGTERM (or SIGINT) stops the listener, gives in-flight requests a
few seconds to finish, aborts the rest and exits 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from pathlib import Path
from typing import Any

import torch

from agents.runtimes import plugin_choice
from agents.runtimes.model import build_model
from agents.runtimes.serve.engine import Engine
from agents.runtimes.serve.kvcache import PagedKVCache
from agents.runtimes.serve.server import ServingHTTPServer
from agents.runtimes.tokenizer import load_tokenizer
from common import apikeys

log = logging.getLogger("flotilla.serve")
# kvCacheBlocks wins over kvCacheBytes; with neither, the engine sizes the cache itself.
# cache: {policy, plugin, params}, the cache plugin the Deployment's policies.cache chose.
# apiKeys: sha256:<hex> digests (spec.serving.apiKeys); with any, POST routes and /cache want a key.
CONFIG_KEYS = {
    "model", "kvCacheBlocks", "kvCacheBytes", "maxBatch", "drainSeconds", "name", "cache", "apiKeys",
}  # fmt: skip


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else the CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but torch sees no CUDA device")
    return torch.device(name)


def load_config(path: str) -> dict[str, Any]:
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"cannot read --config {path}: {exc}") from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise SystemExit(f"--config {path} must be a JSON object with a 'model' object")
    unknown = set(config) - CONFIG_KEYS
    if unknown:
        raise SystemExit(f"--config {path}: unknown keys {sorted(unknown)}; known: {sorted(CONFIG_KEYS)}")
    for key in ("kvCacheBlocks", "kvCacheBytes", "maxBatch"):
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise SystemExit(f"--config {path}: {key} must be a positive integer")
    keys = config.get("apiKeys")
    if keys is not None and (
        not isinstance(keys, list) or not all(isinstance(k, str) and apikeys.DIGEST.match(k) for k in keys)
    ):
        raise SystemExit(
            f"--config {path}: apiKeys must be a list of digests 'sha256:' + 64 lowercase hex digits "
            "(the control plane writes them; never plain keys)"
        )
    return config


def resolve_cache(config: dict[str, Any], path: str) -> plugin_choice.PluginChoice | None:
    """The cache plugin the config names, resolved at start-up so that a node without it
    fails at once, naming the plugin, instead of serving without the cache it was given."""
    if config.get("cache") is None:
        return None
    try:
        return plugin_choice.resolve("cache", config["cache"], "cache")
    except plugin_choice.PluginChoiceError as exc:
        raise SystemExit(f"--config {path}: {exc}; {exc.fix}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agents.runtimes.serve", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--config", required=True, help="JSON: {model: {source, config}, kvCacheBlocks, maxBatch}"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = load_config(args.config)
    cache = resolve_cache(config, args.config)
    device = resolve_device(args.device)
    try:
        model, model_config = build_model(config["model"], device)
    except ValueError as exc:
        raise SystemExit(f"cannot build the model: {exc}") from None
    kv_blocks = config.get("kvCacheBlocks")
    if kv_blocks is None and config.get("kvCacheBytes"):
        dtype = model_config.torch_dtype(device)
        kv_blocks = PagedKVCache.blocks_for_budget(model_config, dtype, config["kvCacheBytes"])
    try:
        tokenizer = load_tokenizer(config["model"].get("tokenizer"))
    except ValueError as exc:
        raise SystemExit(f"cannot load the tokenizer: {exc}") from None
    if tokenizer.vocab_size > model_config.vocabSize:
        raise SystemExit(
            f"model.tokenizer has {tokenizer.vocab_size} tokens but model.config.vocabSize is "
            f"{model_config.vocabSize}; set vocabSize to at least {tokenizer.vocab_size}"
        )
    # The block hashes are seeded with the model's source, as the router seeds its own.
    model_key = config["model"].get("source", "builtin:tiny-llama")
    engine = Engine(
        model, kv_blocks=kv_blocks, max_batch=config.get("maxBatch") or 32, tokenizer=tokenizer,
        cache=cache, model_key=model_key,
    )  # fmt: skip
    name = config.get("name") or model_key
    keys = config.get("apiKeys") or []
    server = ServingHTTPServer((args.host, args.port), engine, name, cache=cache, api_keys=keys)
    engine.start()
    log.info(
        "serving %s on %s (%s, %s, %d KV blocks, cache plugin %s, prefix caching %s, %s)", name, server.url,
        device, model_config.torch_dtype(device), engine.cache.num_blocks, cache.name if cache else "none",
        "on" if engine.prefix.enabled else "off", f"{len(keys)} API keys" if keys else "no API keys",
    )  # fmt: skip

    server.serve_until_signalled(
        log,
        threading.Event(),
        before_drain=lambda: engine.stop(drain_s=float(config.get("drainSeconds", 3.0))),
    )
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
