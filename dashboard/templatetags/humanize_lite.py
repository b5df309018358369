"""Small template filters the dashboard's pages share."""

from __future__ import annotations

from typing import Any

from django import template

register = template.Library()

_CONDITION_CLASS = {"Ready": "ok", "Succeeded": "ok", "Unschedulable": "bad", "Failed": "bad"}


@register.filter
def sum_values(values: Any) -> int:
    return sum(values)


@register.filter
def sum_nodes(clusters: list[dict[str, Any]], key: str) -> int:
    return sum(c["nodes"][key] for c in clusters)


@register.filter
def condition_class(name: str) -> str:
    return _CONDITION_CLASS.get(name, "warn")


@register.filter
def after_slash(value: str | None) -> str:
    """``Deployment/chat`` -> ``chat``: the kind is implied where space is short."""
    return (value or "").rpartition("/")[2]
