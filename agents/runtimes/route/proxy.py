"""The router's HTTP server: OpenAI-compatible endpoints in front of the replica set.

Stdlib ``ThreadingHTTPServer`` like the serving runtime's, one thread per connection.
Each generation request is turned into the tokens and block hashes the replica will
compute, the cache plugin picks a ready replica, and the body goes there unchanged; a
replica that fails before the first byte reaches the client is marked down and the
request goes to another (``forward``). Every answer the router makes itself is the
OpenAI error shape, never a 500.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from typing import Any

from agents.runtimes.httpbase import JsonHandler, TrackingHTTPServer
from agents.runtimes.route import forward
from agents.runtimes.route.config import RouterConfig
from agents.runtimes.route.replicas import Replica, ReplicaSet
from agents.runtimes.serve.protocol import BadRequest, check_api_key, prompt_text, session_of
from agents.runtimes.tokenizer import ByteTokenizer, FileTokenizer
from plugins.prefix_hash import block_hashes, model_seed
from plugins.types import RouteRequest

log = logging.getLogger("flotilla.route.proxy")
ROUTES = ("/v1/completions", "/v1/chat/completions")


class Router:
    """What every request thread shares: the config, tokenizer, replicas and counters."""

    def __init__(
        self,
        config: RouterConfig,
        tokenizer: ByteTokenizer | FileTokenizer,
        replicas: ReplicaSet,
        source: Any = None,
    ):
        self.config = config
        self.tokenizer = tokenizer
        self.replicas = replicas
        self.source = source
        # The serving engine seeds its chain with the same value, so the names agree.
        self.seed = model_seed(config.source)
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self.retries = 0
        self.rejected: Counter[int] = Counter()

    def route_request(self, prompt: str, session: str | None) -> RouteRequest:
        ids = self.tokenizer.encode(prompt)
        size = self.config.block_size
        return RouteRequest(
            token_ids=ids,
            block_hashes=block_hashes(ids, size, seed=self.seed),
            session=session,
            block_size=size,
        )

    def choose(self, request: RouteRequest, exclude: set[str]) -> Replica | None:
        """The replica the cache plugin picks among the ready ones not in ``exclude``, with the
        request counted in flight there; None when none is left."""
        choice = self.config.cache
        while True:
            loads = self.replicas.loads(request, exclude)
            if not loads:
                return None
            names = {load.name for load in loads}
            try:
                name = choice.impl.route(request=request, replicas=loads, params=choice.params)
            except Exception:  # a plugin's bug must cost a routing decision, not the request
                log.exception("cache plugin %s failed to route; taking the least loaded", choice.name)
                name = None
            if name not in names:
                if name is not None:
                    log.error("cache plugin %s chose %r, not a ready replica", choice.name, name)
                name = min(loads, key=lambda r: (r.load, r.name)).name
            replica = self.replicas.begin(name, request.block_hashes)
            if replica is not None:
                return replica
            exclude = {*exclude, name}  # it went down or left just now

    def count_retry(self) -> None:
        with self._lock:
            self.retries += 1

    def count_rejected(self, status: int) -> None:
        with self._lock:
            self.rejected[status] += 1

    def stats(self) -> dict[str, Any]:
        choice = self.config.cache
        replicas = self.replicas.snapshot()
        with self._lock:
            retries, rejected = self.retries, {str(k): v for k, v in sorted(self.rejected.items())}
        return {
            "model": self.config.name,
            "routing": {"policy": choice.policy, "plugin": choice.name, "params": choice.params.model_dump()},
            "blockSize": self.config.block_size,
            "source": self.source.describe() if self.source is not None else {"kind": "none"},
            "replicas": replicas,
            "replicasReady": sum(r["state"] == "ready" for r in replicas),
            "requestsTotal": sum(r["requestsTotal"] for r in replicas),
            "retries": retries,
            "rejected": rejected,
            "uptimeSeconds": time.monotonic() - self.started,
        }

    def prometheus(self) -> str:
        """Prometheus text exposition (format 0.0.4)."""
        stats = self.stats()
        lines = [
            "# HELP flotilla_router_requests_total Requests sent to a replica, by how they ended.",
            "# TYPE flotilla_router_requests_total counter",
        ]
        for replica in stats["replicas"]:
            for outcome, count in sorted(replica["requests"].items()):
                lines.append(
                    f'flotilla_router_requests_total{{replica="{_label(replica["name"])}",'
                    f'outcome="{outcome}"}} {count}'
                )
        lines += [
            "# HELP flotilla_router_retries_total Requests tried again on another replica.",
            "# TYPE flotilla_router_retries_total counter",
            f"flotilla_router_retries_total {stats['retries']}",
            "# HELP flotilla_router_rejected_total Requests the router answered itself, by status.",
            "# TYPE flotilla_router_rejected_total counter",
        ]
        lines += [f'flotilla_router_rejected_total{{code="{c}"}} {n}' for c, n in stats["rejected"].items()]
        lines += [
            "# HELP flotilla_router_replicas_ready Replicas the router routes to now.",
            "# TYPE flotilla_router_replicas_ready gauge",
            f"flotilla_router_replicas_ready {stats['replicasReady']}",
            "# HELP flotilla_router_in_flight Requests in flight to each replica.",
            "# TYPE flotilla_router_in_flight gauge",
        ]
        lines += [
            f'flotilla_router_in_flight{{replica="{_label(r["name"])}"}} {r["inFlight"]}'
            for r in stats["replicas"]
        ]
        return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class RouteHandler(JsonHandler):
    server: RouterHTTPServer
    log = log

    def _error(self, status: int, message: str, field: str | None = None) -> None:
        self.server.router.count_rejected(status)
        super()._error(status, message, field)

    # -- routes -----------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        path = self.path.split("?", 1)[0]
        router = self.server.router
        if path == "/health":
            ready = router.replicas.ready_count()
            self._json(200, {"status": "ok", "model": router.config.name, "replicasReady": ready})
        elif path == "/stats":
            self._json(200, router.stats())
        elif path == "/metrics":
            self._send(200, router.prometheus().encode(), "text/plain; version=0.0.4")
        elif path == "/v1/models":
            try:
                check_api_key(self.headers, list(router.config.api_keys))
            except BadRequest as exc:
                self._error(exc.status, str(exc), exc.field)
                return
            self._json(200, {"object": "list", "data": [{"id": router.config.name, "object": "model"}]})
        else:
            self._error(404, f"no route for GET {path}")

    def _post(self) -> None:
        path = self.path.split("?", 1)[0]
        router = self.server.router
        if path not in ROUTES:
            self._skip_body()
            self._error(404, f"no route for POST {path}")
            return
        try:
            check_api_key(self.headers, list(router.config.api_keys))
        except BadRequest as exc:
            self._skip_body()  # unread: an unauthenticated client gets no JSON parsing
            self._error(exc.status, str(exc), exc.field)
            return
        try:
            raw = self._read_body()
            try:
                body = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise BadRequest(f"request body is not valid JSON: {exc}") from None
            prompt = prompt_text(body, path == "/v1/chat/completions")
            session = session_of(body, self.headers)
        except BadRequest as exc:
            self._error(exc.status, str(exc), exc.field)
            return
        self._forward(
            path, raw, forward.upstream_headers(self.headers), router.route_request(prompt, session)
        )

    def _forward(self, path: str, raw: bytes, headers: dict[str, str], request: RouteRequest) -> None:
        """Send to the replica the plugin picks; on a failure before any byte reached the
        client, mark it down and try the next, at most once per replica."""
        router = self.server.router
        tried: set[str] = set()
        failures: list[str] = []
        while True:
            replica = router.choose(request, tried)
            if replica is None:
                why = f"; tried {'; '.join(failures)}" if failures else ""
                self._error(503, f"no ready replica to serve {router.config.name}{why}")
                return
            if tried:
                router.count_retry()
            tried.add(replica.name)
            outcome = "failed"
            try:
                outcome = self._attempt(replica, path, raw, headers)
                return
            except forward.ReplicaFailed as exc:
                router.replicas.mark_down(replica, str(exc))
                failures.append(f"{replica.name}: {exc}")
            finally:
                router.replicas.end(replica, outcome)

    def _attempt(self, replica: Replica, path: str, raw: bytes, headers: dict[str, str]) -> str:
        """One replica's answer to the client; the outcome it is counted under."""
        response = forward.send(replica, path, raw, headers)
        content_type = response.headers.get("Content-Type", "application/json")
        if not content_type.startswith("text/event-stream"):
            body = forward.read_whole(response)
            try:
                self._send(response.status_code, body, content_type)
            except (BrokenPipeError, ConnectionResetError):
                return "cancelled"
            return "ok" if response.status_code < 400 else "client_error"
        try:
            self.send_response(response.status_code)
            self.send_header("Content-Type", content_type)
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            try:
                for event in forward.events(response):
                    self.wfile.write(event)
                    self.wfile.flush()
            except forward.StreamBroken as exc:
                self.server.router.replicas.mark_down(replica, f"its stream broke: {exc}")
                self.wfile.write(forward.error_event(f"the replica serving this stream failed: {exc}"))
                self.wfile.flush()
                return "stream_error"
            return "ok"
        except (BrokenPipeError, ConnectionResetError):
            return "cancelled"  # closing the replica's stream tells it to stop generating
        finally:
            response.close()


class RouterHTTPServer(TrackingHTTPServer):
    """The HTTP server that knows its :class:`Router`."""

    def __init__(self, address: tuple[str, int], router: Router):
        super().__init__(address, RouteHandler)
        self.router = router
