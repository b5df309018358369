"""Sending one request to one replica, and reading what comes back.

A generation request changes nothing on the replica until it answers, so until the first
byte reaches the client it may be tried again elsewhere: every failure up to then is a
:class:`ReplicaFailed` (connection refused or timed out, the connection dropped, a 5xx).
After that, a replica that stops before ``data: [DONE]`` is a :class:`StreamBroken`: the
client's stream is ended with an error event, never left hanging or cut mid-event.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping

import httpx

from agents.runtimes.route.replicas import Replica, describe
from agents.runtimes.serve.protocol import SESSION_HEADER, error_body

DONE = b"data: [DONE]\n\n"
# Headers a replica needs from the client's request: the key (replicas check the same
# digests) and the session (the replica's cache plugin pins a session's blocks).
FORWARDED = ("Authorization", SESSION_HEADER)


class ReplicaFailed(Exception):
    """The replica failed before anything reached the client: mark it down, try another."""


class StreamBroken(Exception):
    """The replica's stream stopped before ``data: [DONE]``."""


def upstream_headers(headers: Mapping[str, str]) -> dict[str, str]:
    sent = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
    for name in FORWARDED:
        value = headers.get(name)
        if value is not None:
            sent[name] = value
    return sent


def send(replica: Replica, path: str, raw: bytes, headers: dict[str, str]) -> httpx.Response:
    """POST the client's body unchanged; the response is open (streamed) and below 500."""
    request = replica.client.build_request("POST", path, content=raw, headers=headers)
    try:
        response = replica.client.send(request, stream=True)
    except httpx.TransportError as exc:
        raise ReplicaFailed(f"POST {path}: {describe(exc)}") from None
    if response.status_code >= 500:
        try:
            detail = response.read()[:200].decode("utf-8", errors="replace")
        except httpx.HTTPError:
            detail = ""
        finally:
            response.close()
        raise ReplicaFailed(f"POST {path}: HTTP {response.status_code} {detail}".rstrip())
    return response


def read_whole(response: httpx.Response) -> bytes:
    """A non-streamed answer, read in full before any of it goes to the client."""
    try:
        return response.read()
    except httpx.TransportError as exc:
        raise ReplicaFailed(f"reading the answer: {describe(exc)}") from None
    finally:
        response.close()


def events(response: httpx.Response) -> Iterator[bytes]:
    """The server-sent events of ``response``, each whole (ending in a blank line) as soon
    as it has arrived, through ``data: [DONE]``; StreamBroken if the replica stops first.

    The replica ends its stream by closing the connection, so a killed replica looks like
    a finished stream to HTTP: only the missing ``[DONE]`` tells them apart."""
    buffer = b""
    try:
        for chunk in response.iter_raw():
            buffer += chunk
            while (cut := buffer.find(b"\n\n")) >= 0:
                event, buffer = buffer[: cut + 2], buffer[cut + 2 :]
                yield event
                if event == DONE:
                    return
    except httpx.TransportError as exc:
        raise StreamBroken(describe(exc)) from None
    raise StreamBroken("the replica closed the stream before data: [DONE]")


def error_event(message: str) -> bytes:
    """What a client's stream ends with when its replica failed mid-way."""
    return b"data: " + json.dumps(error_body(502, message)).encode() + b"\n\n" + DONE
