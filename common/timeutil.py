"""Timestamps as the API shows them (RFC 3339, UTC, 'Z') and ages as tables show them."""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    return datetime.now(UTC)


def rfc3339(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def age(moment: datetime | None, at: datetime | None = None) -> str:
    """kubectl-style relative age: 45s, 12m, 3h, 5d."""
    if moment is None:
        return "<unknown>"
    seconds = max(0, int(((at or now()) - moment).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
