"""Events (who/what/why about an object) and the audit log (who changed what)."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.db import transaction

from common.timeutil import now, rfc3339
from controlplane.models import AuditEntry, Event, Resource

log = logging.getLogger(__name__)
DEDUP_WINDOW = timedelta(hours=1)


def record(
    resource: Resource | tuple[str, str],
    reason: str,
    message: str,
    *,
    type_: str = "Normal",
    source: str = "controlplane",
) -> Event:
    """Record an event; the same reason and message again within the hour bumps a count."""
    if isinstance(resource, Resource):
        kind, name, uid = resource.kind, resource.name, str(resource.uid)
    else:
        (kind, name), uid = resource, ""
    recent = (
        Event.objects.filter(
            kind=kind,
            name=name,
            uid=uid,  # a re-created object with the same name starts its own counts
            reason=reason,
            message=message,
            last_seen__gte=now() - DEDUP_WINDOW,
        )
        .order_by("-last_seen")
        .first()
    )
    if recent is not None:
        recent.count += 1
        recent.save(update_fields=["count", "last_seen"])
        event = recent
    else:
        event = Event.objects.create(
            kind=kind, name=name, uid=uid, type=type_, reason=reason, message=message, source=source
        )
    payload = to_dict(event)
    transaction.on_commit(lambda: _notify(payload))
    return event


def _notify(payload: dict[str, Any]) -> None:
    from plugins import manager

    try:
        manager.notify_event(payload)
    except Exception:  # an observer plugin must never break the control plane
        log.exception("event_recorded hook failed")


def to_dict(event: Event) -> dict[str, Any]:
    return {
        "involvedObject": {"kind": event.kind, "name": event.name, "uid": event.uid},
        "type": event.type,
        "reason": event.reason,
        "message": event.message,
        "source": event.source,
        "count": event.count,
        "firstTimestamp": rfc3339(event.first_seen),
        "lastTimestamp": rfc3339(event.last_seen),
    }


def audit(actor: str, verb: str, kind: str, name: str, summary: str = "") -> None:
    AuditEntry.objects.create(actor=actor, verb=verb, kind=kind, name=name, summary=summary[:2000])


def audit_to_dict(entry: AuditEntry) -> dict[str, Any]:
    return {
        "actor": entry.actor,
        "verb": entry.verb,
        "object": {"kind": entry.kind, "name": entry.name},
        "summary": entry.summary,
        "time": rfc3339(entry.at),
    }
