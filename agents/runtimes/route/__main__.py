"""``python -m agents.runtimes.route --config FILE --host H --port N [--backend URL ...]``.

The agent starts this as a router Workload's subprocess, with no GPU and no --device:
it imports no torch. Replicas come from ``--backend`` (repeated), else from the router's
own Workload on the control plane (``FLOTILLA_URL``, ``FLOTILLA_TOKEN``, ``FLOTILLA_NODE``,
``FLOTILLA_WORKLOAD``; see ``source``). It prints exactly one JSON line to stdout,
``{"event": "ready", "url": ...}``, once it serves; everything else goes to stderr.
SIGTERM (or SIGINT) stops the listener, lets in-flight requests finish for a few
seconds, and exits 0.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading

from agents.runtimes.route.config import load_config
from agents.runtimes.route.proxy import Router, RouterHTTPServer
from agents.runtimes.route.replicas import ReplicaSet
from agents.runtimes.route.source import StaticSource, WatchSource, watch_settings
from agents.runtimes.tokenizer import load_tokenizer

log = logging.getLogger("flotilla.route")
DRAIN_SECONDS = 5.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agents.runtimes.route", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--config",
        required=True,
        help="JSON: {model: {source, config, tokenizer}, name, cache, apiKeys, blockSize}",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--backend",
        action="append",
        default=[],
        metavar="URL",
        help="a replica's URL (repeat); else watch mode",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = load_config(args.config)
    try:
        tokenizer = load_tokenizer(config.model.get("tokenizer"))
    except ValueError as exc:
        raise SystemExit(f"cannot load the tokenizer: {exc}") from None
    if args.backend:
        source: StaticSource | WatchSource = StaticSource(args.backend)
    else:
        settings = watch_settings()
        if settings is None:
            raise SystemExit(
                "no replicas: pass --backend URL (repeat it), or set FLOTILLA_URL, FLOTILLA_TOKEN, "
                "FLOTILLA_NODE and FLOTILLA_WORKLOAD to take them from the router's Workload"
            )
        source = WatchSource(settings)

    stopping = threading.Event()
    replicas = ReplicaSet(config.block_size, config.source)
    source.start(replicas, stopping)
    replicas.poll_once()  # static replicas are known, and likely ready, before the first request
    router = Router(config, tokenizer, replicas, source)
    server = RouterHTTPServer((args.host, args.port), router)
    threading.Thread(target=replicas.run, args=(stopping,), name="replica-state", daemon=True).start()
    where = f"{len(replicas.names())} static replicas" if args.backend else "the watched replicas"
    log.info(
        "routing %s on %s to %s (cache plugin %s, blocks of %d tokens)",
        config.name, server.url, where, config.cache.name, config.block_size,
    )  # fmt: skip

    try:
        server.serve_until_signalled(log, stopping, on_signal=replicas.wake, drain_s=DRAIN_SECONDS)
    finally:
        replicas.close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
