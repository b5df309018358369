"""The OpenAI request shapes the serving runtime and the router both read, without torch.

The router (agents/runtimes/route) must turn a request into the same prompt text the
replica will tokenize, to score replicas by the prefix they hold; so the chat template,
prompt extraction, session id, API-key check and the error body live here, imported by
both, and this module imports nothing heavier than the standard library.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from common import apikeys

ROLES = ("system", "user", "assistant")
MAX_SESSION_CHARS = 256
SESSION_HEADER = "X-Session-Id"


class BadRequest(ValueError):
    """A client mistake: a 4xx with the OpenAI error shape naming ``field``."""

    def __init__(self, message: str, field: str | None = None, status: int = 400):
        super().__init__(message)
        self.field, self.status = field, status


def chat_prompt(messages: list[dict[str, str]]) -> str:
    """The simple chat template: ``<|role|>\\ncontent\\n`` per message, then ``<|assistant|>\\n``."""
    return "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages) + "<|assistant|>\n"


def prompt_text(body: Any, chat: bool) -> str:
    """The prompt a completions or chat body asks for, validated; BadRequest names the field."""
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages must be a non-empty list", "messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise BadRequest(
                    f"messages[{i}] must have role in {ROLES} and string content", f"messages[{i}]"
                )
        return chat_prompt(messages)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise BadRequest("prompt must be a non-empty string", "prompt")
    return prompt


def session_of(body: Any, headers: Mapping[str, str]) -> str | None:
    """The multi-turn session a request belongs to: the ``X-Session-Id`` header, else the
    OpenAI ``user`` field; None when neither is set."""
    value = headers.get(SESSION_HEADER)
    field = "X-Session-Id"
    if value is None and isinstance(body, dict):
        value, field = body.get("user"), "user"
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_SESSION_CHARS:
        raise BadRequest(f"{field} must be a string of 1 to {MAX_SESSION_CHARS} characters", field)
    return value


def check_api_key(headers: Mapping[str, str], digests: list[str]) -> None:
    """Raise a 401 BadRequest unless the request carries one of the keys (no keys: open)."""
    if not digests:
        return
    if not apikeys.accepts(digests, apikeys.bearer(headers.get("Authorization"))):
        raise BadRequest(
            "a valid API key is required: send 'Authorization: Bearer KEY'", "Authorization", status=401
        )


def error_body(status: int, message: str, field: str | None = None) -> dict[str, Any]:
    """The OpenAI error shape."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 401:
        kind = "authentication_error"
    return {"error": {"message": message, "type": kind, "param": field, "code": None}}
