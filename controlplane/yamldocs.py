"""Parse apply bodies (YAML or JSON, one or many documents) with hard limits.

YAML aliases are refused outright: a few lines of anchors and aliases can
expand to gigabytes ("billion laughs"), and declarative specs never need them.
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from yaml.events import AliasEvent

from controlplane.errors import Invalid, TooLarge

MAX_DEPTH = 32


class NoAliasLoader(yaml.SafeLoader):
    """A SafeLoader that refuses aliases and stops composing past MAX_DEPTH levels."""

    _nesting = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(AliasEvent):
            event = self.peek_event()
            mark = event.start_mark
            raise Invalid(
                f"YAML alias *{event.anchor} at line {mark.line + 1} is not allowed",
                [{"field": "", "fix": "write the value out instead of using anchors and aliases"}],
            )
        self._nesting += 1
        try:
            if self._nesting > MAX_DEPTH + 1:
                raise _too_deep()
            return super().compose_node(parent, index)
        finally:
            self._nesting -= 1


def _depth(value: Any, level: int = 0) -> int:
    """Nesting depth; also refuses NUL characters, which PostgreSQL's JSON cannot store
    (so both back ends answer the same 422 instead of one of them a 500)."""
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        for key in value:
            _no_nul(key)
        return max((_depth(v, level + 1) for v in value.values()), default=level)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level)
    _no_nul(value)
    return level


def _no_nul(value: Any) -> None:
    if isinstance(value, str) and "\x00" in value:
        raise Invalid(
            "a string contains a NUL character (U+0000)",
            [{"field": "", "fix": "remove the NUL character; it cannot be stored"}],
        )


def _too_deep(index: int | None = None) -> Invalid:
    where = f"document {index}" if index is not None else "the body"
    detail: dict[str, Any] = {"field": "", "fix": "flatten the document"}
    if index is not None:
        detail["document"] = index
    return Invalid(f"{where} is nested deeper than {MAX_DEPTH} levels", [detail])


def _load_yaml(text: str, max_documents: int) -> list[Any]:
    documents = []
    try:
        for document in yaml.load_all(text, Loader=NoAliasLoader):  # noqa: S506 - a SafeLoader
            if document is not None:
                documents.append(document)
            if len(documents) > max_documents:
                break
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise Invalid(f"body is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    return documents


def _load(text: str, max_documents: int) -> list[Any]:
    """JSON when it parses as JSON, else YAML (flow-style YAML also starts with '{')."""
    if text.lstrip().startswith(("{", "[")):
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as json_error:
            try:
                return _load_yaml(text, max_documents)
            except Invalid:
                raise Invalid(
                    f"body is neither valid JSON ({json_error.msg} at line {json_error.lineno}) nor YAML"
                ) from None
        return loaded if isinstance(loaded, list) else [loaded]
    return _load_yaml(text, max_documents)


def _unwrap_lists(documents: list[Any]) -> list[Any]:
    """Expand ``kind: List`` documents (what `get -o yaml` prints) into their items."""
    expanded: list[Any] = []
    for document in documents:
        if isinstance(document, dict) and document.get("kind") == "List":
            items = document.get("items") or []
            expanded.extend(items if isinstance(items, list) else [items])
        else:
            expanded.append(document)
    return expanded


def parse(body: bytes, max_bytes: int, max_documents: int) -> list[Any]:
    if len(body) > max_bytes:
        raise TooLarge(
            f"body is {len(body)} bytes; the limit is {max_bytes}",
            [{"field": "", "fix": "split the apply into smaller batches or raise FLOTILLA_MAX_BODY_BYTES"}],
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid("body is not UTF-8 text") from None
    try:
        documents = _unwrap_lists(_load(text, max_documents))
    except RecursionError:
        # Nesting bombs: far under the size limit, deep enough to exhaust the parser's stack.
        raise _too_deep() from None
    if len(documents) > max_documents:
        raise TooLarge(
            f"more than {max_documents} documents in one apply",
            [{"field": "", "fix": "split the apply or raise FLOTILLA_MAX_DOCUMENTS"}],
        )
    if not documents:
        raise Invalid("no documents in the body", [{"field": "", "fix": "send at least one resource"}])
    for index, document in enumerate(documents):
        try:
            depth = _depth(document)
        except Invalid as exc:
            exc.message = f"document {index}: {exc.message}"
            for detail in exc.details:
                detail["document"] = index
            raise
        if depth > MAX_DEPTH:
            raise _too_deep(index)
    return documents
