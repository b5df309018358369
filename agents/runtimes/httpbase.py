"""The HTTP plumbing the serving runtime and the router share: JSON answers, bounded
bodies, and a server that can wait for in-flight POSTs on shutdown.

Standard library only (no torch), because the router imports it and is placed without
a GPU. Both servers are stdlib ``ThreadingHTTPServer`` s speaking HTTP/1.1 with
keep-alive, so an answer that ends the connection must say ``Connection: close``, or a
pooling client sends its next request into a socket that is about to close.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from agents.runtimes.serve.protocol import BadRequest, error_body

MAX_BODY_BYTES = 1 << 20


class JsonHandler(BaseHTTPRequestHandler):
    """A request handler with JSON answers in the OpenAI error shape and size-checked bodies."""

    server: TrackingHTTPServer
    protocol_version = "HTTP/1.1"
    log = logging.getLogger("flotilla.http")

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        """Every POST counts as in flight until answered, so shutdown waits for it."""
        with self.server.tracking():
            self._post()

    def _post(self) -> None:
        self._skip_body()
        self._error(404, f"no route for POST {self.path.split('?', 1)[0]}")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        self.log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, data: Any) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _error(self, status: int, message: str, field: str | None = None) -> None:
        self._json(status, error_body(status, message, field))

    def _read_body(self) -> bytes:
        """The request body; BadRequest (411, 413) without a length or beyond the limit."""
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise BadRequest("a Content-Length header is required", status=411)
        if int(length) > MAX_BODY_BYTES:
            self.close_connection = True
            self._discard(min(int(length), 8 * MAX_BODY_BYTES))  # so the client can read the answer
            raise BadRequest(f"request body exceeds {MAX_BODY_BYTES} bytes", status=413)
        return self.rfile.read(int(length))

    def _read_json(self) -> Any:
        raw = self._read_body()
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadRequest(f"request body is not valid JSON: {exc}") from None

    def _skip_body(self) -> None:
        """Read past a body left unanswered, so the connection can take the next request."""
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit() or int(length) > MAX_BODY_BYTES:
            self.close_connection = True
            return
        self._discard(int(length))

    def _discard(self, remaining: int) -> None:
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 16))
            if not chunk:
                return
            remaining -= len(chunk)


class TrackingHTTPServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer that counts POSTs in flight, so shutdown can wait for their
    responses to be written before the process exits."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]):
        super().__init__(address, handler)
        self._inflight = 0
        self._idle = threading.Condition()

    @contextlib.contextmanager
    def tracking(self) -> Iterator[None]:
        with self._idle:
            self._inflight += 1
        try:
            yield
        finally:
            with self._idle:
                self._inflight -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no POST is in flight; False if some still are after ``timeout``."""
        with self._idle:
            return self._idle.wait_for(lambda: self._inflight == 0, timeout)

    def serve_until_signalled(
        self,
        log: logging.Logger,
        stopping: threading.Event,
        *,
        on_signal: Callable[[], None] = lambda: None,
        before_drain: Callable[[], None] = lambda: None,
        drain_s: float = 2.0,
    ) -> None:
        """The runtime's main loop, as the agent's supervisor expects it: print the one
        ``{"event": "ready", "url": ...}`` line on stdout, serve until SIGTERM or SIGINT
        (which set ``stopping`` and call ``on_signal``), then ``before_drain``, wait up to
        ``drain_s`` for POSTs in flight, and close the socket."""

        def handle(signum: int, _frame: object) -> None:
            if not stopping.is_set():
                stopping.set()
                on_signal()
                log.info("signal %d: shutting down", signum)
                threading.Thread(target=self.shutdown, daemon=True).start()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
        print(json.dumps({"event": "ready", "url": self.url}), flush=True)
        try:
            self.serve_forever(poll_interval=0.2)
        finally:
            stopping.set()
            before_drain()
            if not self.wait_idle(timeout=drain_s):
                log.warning("exiting with responses still being written")
            self.server_close()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"
