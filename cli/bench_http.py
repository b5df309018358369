"""A lean HTTP/1.1 client for load generators: one keep-alive connection, JSON in and out.

``flotilla bench agents`` runs a thousand agents in one process on the same
machine as the server. With a general-purpose client (httpx) the load generator
itself needed more than a core at that scale, so on a 2-core machine it starved
the server it was measuring and the latencies it reported were its own queueing.
This client does only what the agent protocol needs — a request with a JSON
body, a response with ``Content-Length`` or chunked encoding, keep-alive — over
asyncio streams, so nearly all of the machine is left to the server.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlencode, urlsplit


class HTTPError(Exception):
    """The request failed: no connection, a timeout, a malformed answer, or a status >= 400."""

    def __init__(self, message: str, status: int = 0, body: bytes = b""):
        super().__init__(message)
        self.status = status
        self.body = body


class Response:
    def __init__(self, status: int, body: bytes):
        self.status_code = status
        self.content = body

    def json(self) -> Any:
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def raise_for_status(self) -> None:
        if self.status_code >= 400:
            raise HTTPError(f"HTTP {self.status_code}: {self.text[:200]}", self.status_code, self.content)


class Connection:
    """One keep-alive connection, used by one task at a time (as one agent loop uses it)."""

    MAX_BODY = 64 * 1024 * 1024

    def __init__(self, base_url: str, timeout: float):
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"only http:// URLs are supported, not {base_url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        if params:
            path = f"{path}?{urlencode(params)}"
        body = b"" if json_body is None else json.dumps(json_body).encode()
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines.append(f"Content-Length: {len(body)}")
        if json_body is not None:
            lines.append("Content-Type: application/json")
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        payload = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
        try:
            return await asyncio.wait_for(self._exchange(payload), self.timeout)
        except (TimeoutError, OSError, EOFError, asyncio.LimitOverrunError, ValueError) as exc:
            await self.close()
            raise HTTPError(f"{method} {path}: {type(exc).__name__}: {exc}") from None

    async def _exchange(self, payload: bytes) -> Response:
        # The server closes keep-alive connections that idle (gunicorn: after 2 s), and a
        # heartbeat idles longer than that: a reused connection that the server has closed
        # answers with EOF before any byte, and the request is sent again on a new one.
        reused = self._writer is not None and not self._writer.is_closing() and not self._reader.at_eof()
        if not reused:
            await self.close()
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None and self._writer is not None
        try:
            self._writer.write(payload)
            await self._writer.drain()
            status_line = await self._reader.readuntil(b"\r\n")
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            if not reused or (isinstance(exc, asyncio.IncompleteReadError) and exc.partial):
                raise
            await self.close()
            return await self._exchange(payload)
        status = int(status_line.split(b" ", 2)[1])
        length, chunked, keep_alive = None, False, True
        while (line := await self._reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.decode("latin-1").partition(":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value:
                chunked = True
            elif name == "connection" and value == "close":
                keep_alive = False
        if chunked:
            body = await self._chunked()
        elif length is not None:
            if length > self.MAX_BODY:
                raise ValueError(f"a {length}-byte body is larger than this client takes")
            body = await self._reader.readexactly(length)
        else:
            body = await self._reader.read(self.MAX_BODY)
            keep_alive = False
        if not keep_alive:
            await self.close()
        return Response(status, body)

    async def _chunked(self) -> bytes:
        assert self._reader is not None
        parts = []
        while True:
            size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self._reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await self._reader.readexactly(size))
            await self._reader.readexactly(2)

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass
