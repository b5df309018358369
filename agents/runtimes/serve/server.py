"""The per-Workload HTTP server: OpenAI-compatible completions and chat, health, metrics, stats,
and ``/cache``, the prefix-block hashes the router polls.

Stdlib ``ThreadingHTTPServer``: one thread per connection, all feeding the one engine.
Every request body is validated before it reaches the engine, and every client mistake is
a 4xx JSON error naming the field -- a 500 means a bug in this file.

With API keys configured, the POST routes and ``/cache`` want one (``Authorization:
Bearer``); ``/health``, ``/metrics``, ``/stats`` and ``/v1/models`` stay open, because the
agent on the node polls them without a key.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from agents.runtimes.httpbase import JsonHandler, TrackingHTTPServer
from agents.runtimes.plugin_choice import PluginChoice
from agents.runtimes.serve.engine import Engine, EngineClosed
from agents.runtimes.serve.protocol import BadRequest, check_api_key, prompt_text, session_of
from agents.runtimes.serve.request import Request
from agents.runtimes.serve.sampling import SamplingParams

log = logging.getLogger("flotilla.serve.server")
MAX_STOP_STRINGS = 4


@dataclass
class Parsed:
    prompt: str
    params: SamplingParams
    stream: bool


def _number(body: dict, name: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"{name} must be a number", name)
    if value > high or value < low or (low_open and value == low):
        raise BadRequest(f"{name} must be in {'(' if low_open else '['}{low}, {high}]", name)
    return float(value)


def parse_body(body: Any, chat: bool, max_tokens_limit: int) -> Parsed:
    """Validate an OpenAI-style request body into a prompt and sampling parameters."""
    prompt = prompt_text(body, chat)
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens", 16))
    if (
        isinstance(max_tokens, bool)
        or not isinstance(max_tokens, int)
        or not 1 <= max_tokens <= max_tokens_limit
    ):
        raise BadRequest(f"max_tokens must be an integer in [1, {max_tokens_limit}]", "max_tokens")
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0, low_open=True)
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if (
        not isinstance(stop, list)
        or len(stop) > MAX_STOP_STRINGS
        or not all(isinstance(s, str) and s for s in stop)
    ):
        raise BadRequest(
            f"stop must be a string or a list of up to {MAX_STOP_STRINGS} non-empty strings", "stop"
        )
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise BadRequest("seed must be a non-negative integer", "seed")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("stream must be a boolean", "stream")
    n = body.get("n", 1)
    if n != 1:
        raise BadRequest("only n=1 is supported", "n")
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed, stop=stop)
    return Parsed(prompt, params, stream)


class ServeHandler(JsonHandler):
    server: ServingHTTPServer
    log = log

    # -- routes -----------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        path = self.path.split("?", 1)[0]
        engine = self.server.engine
        if path == "/health":
            self._json(200, {"status": "ok", "model": self.server.model_name})
        elif path == "/metrics":
            self._send(200, engine.prometheus().encode(), "text/plain; version=0.0.4")
        elif path == "/cache":
            try:
                check_api_key(self.headers, self.server.api_keys)
            except BadRequest as exc:
                self._error(exc.status, str(exc), exc.field)
                return
            self._json(200, self.server.cache_listing())
        elif path == "/stats":
            cache = self.server.cache
            named = {"cachePolicy": cache.name} if cache is not None else {}
            self._json(200, {"model": self.server.model_name, **named, **engine.stats()})
        elif path == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": self.server.model_name, "object": "model"}]})
        else:
            self._error(404, f"no route for GET {path}")

    def _post(self) -> None:
        path = self.path.split("?", 1)[0]
        if path not in ("/v1/completions", "/v1/chat/completions"):
            self._error(404, f"no route for POST {path}")
            return
        chat = path == "/v1/chat/completions"
        engine = self.server.engine
        try:
            check_api_key(self.headers, self.server.api_keys)
        except BadRequest as exc:
            self._skip_body()
            self._error(exc.status, str(exc), exc.field)
            return
        try:
            body = self._read_json()
            parsed = parse_body(body, chat, engine.config.maxSeqLen - 1)
            session = session_of(body, self.headers)
            prompt_ids = engine.tokenizer.encode(parsed.prompt)
            if len(prompt_ids) + 1 >= engine.config.maxSeqLen:
                raise BadRequest(
                    f"prompt is {len(prompt_ids)} tokens; the model's context is {engine.config.maxSeqLen}",
                    "messages" if chat else "prompt",
                )
            try:
                request = engine.submit(prompt_ids, parsed.params, session=session)
            except ValueError as exc:
                raise BadRequest(str(exc), "max_tokens") from None
        except BadRequest as exc:
            self._error(exc.status, str(exc), exc.field)
            return
        except EngineClosed:
            self._error(503, "the server is shutting down")
            return
        if parsed.stream:
            self._stream(request, chat)
        else:
            self._complete(request, chat)

    def _envelope(self, chat: bool, rid: str) -> dict[str, Any]:
        kind = "chat.completion" if chat else "text_completion"
        return {"id": rid, "object": kind, "created": int(time.time()), "model": self.server.model_name}

    def _complete(self, request: Request, chat: bool) -> None:
        result = request.result()
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        reason = "length" if result.finish_reason == "length" else "stop"
        if chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "finish_reason": reason,
            }
        else:
            choice = {"index": 0, "text": result.text, "logprobs": None, "finish_reason": reason}
        usage = {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": len(result.token_ids),
            "total_tokens": result.prompt_tokens + len(result.token_ids),
            "prompt_tokens_details": {"cached_tokens": result.cached_tokens},
        }
        self._json(200, {**self._envelope(chat, rid), "choices": [choice], "usage": usage})

    def _stream(self, request: Request, chat: bool) -> None:
        """Server-sent events: one ``data: {...}`` chunk per delta, a final chunk, ``data: [DONE]``."""
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        envelope = self._envelope(chat, rid)
        if chat:
            envelope["object"] = "chat.completion.chunk"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

        def chunk(delta: str | None, reason: str | None, first: bool = False) -> bytes:
            if chat:
                content: dict[str, str] = {"role": "assistant"} if first else {}
                if delta:
                    content["content"] = delta
                choice = {"index": 0, "delta": content, "finish_reason": reason}
            else:
                choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": reason}
            return b"data: " + json.dumps({**envelope, "choices": [choice]}).encode() + b"\n\n"

        try:
            if chat:
                self.wfile.write(chunk(None, None, first=True))
            for delta in request.stream():
                self.wfile.write(chunk(delta, None))
                self.wfile.flush()
            reason = "length" if request.finish_reason == "length" else "stop"
            self.wfile.write(chunk(None, reason) + b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            request.cancel()


class ServingHTTPServer(TrackingHTTPServer):
    """A ThreadingHTTPServer that knows its engine, model name, cache plugin and API keys."""

    def __init__(
        self,
        address: tuple[str, int],
        engine: Engine,
        model_name: str,
        cache: PluginChoice | None = None,
        api_keys: list[str] | None = None,
    ):
        super().__init__(address, ServeHandler)
        self.engine = engine
        self.model_name = model_name
        # The cache plugin spec.config.cache chose; /stats names it (cachePolicy).
        self.cache = cache
        # sha256:<hex> digests (common.apikeys); empty: every route is open.
        self.api_keys = list(api_keys or [])

    def cache_listing(self) -> dict[str, Any]:
        """GET /cache: the hashes of the blocks this replica's prefix cache holds, most
        recently used first, for the router to correct its own record of them. A
        router seeds ``plugins.prefix_hash.block_hashes`` with ``model_seed(modelKey)``."""
        engine = self.engine
        return {
            "model": self.model_name,
            "modelKey": engine.model_key,
            "blockSize": engine.cache.block_size,
            "hashes": engine.cached_hashes(),
        }
