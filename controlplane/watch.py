"""Watch: long-poll for the changes after a resourceVersion.

Changes are read from the ``Change`` log, whose ids are resourceVersions in
commit order. The log keeps the last FLOTILLA_WATCH_RETENTION entries; a
watcher that asks for something older gets 410 Gone and re-lists, as a
Kubernetes client does.
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.db import connection

from controlplane.errors import Gone
from controlplane.models import Change, Counter
from controlplane.watch_hub import hub, latest_change

POLL_SECONDS = 0.2
LIMIT = 500
PRUNED_COUNTER = "watch_pruned_below"


def current_version() -> int:
    return Counter.objects.filter(name="resource_version").values_list("value", flat=True).first() or 0


def pruned_below() -> int:
    return Counter.objects.filter(name=PRUNED_COUNTER).values_list("value", flat=True).first() or 0


def changes_after(
    kind: str, since: int, selector: dict[str, str], node_name: str | None, limit: int = LIMIT
) -> tuple[list[Change], int]:
    """Matching changes after ``since``, and how far the log was looked through.

    The top of the log is read first: everything up to it is committed, so when
    nothing matches, the caller has seen up to there (not just up to ``since``).
    """
    top = latest_change()
    queryset = Change.objects.filter(kind=kind, id__gt=since, id__lte=top).order_by("id")
    if node_name is not None:
        queryset = queryset.filter(node_name=node_name)
    rows = list(queryset[:limit])
    seen = rows[-1].id if len(rows) == limit else max(since, top)
    if selector:
        rows = [
            r
            for r in rows
            if all(r.object["metadata"].get("labels", {}).get(k) == v for k, v in selector.items())
        ]
    return rows, seen


def wait(
    kind: str, since: int, timeout: int, selector: dict[str, str], node_name: str | None
) -> dict[str, Any]:
    if settings.FLOTILLA_WATCH_HUB and since and hub.covers(since):
        # The hub has read the log past ``since`` and still holds everything after it:
        # nothing was pruned from under the watcher and nothing need be read again.
        # The request may hold a connection (its token was looked up): give it back
        # before waiting, or a thousand waiting agents would drain the pool.
        connection.close()
        waited = hub.wait(kind, since, timeout, selector, node_name, LIMIT)
        if waited is not None:
            return _answer(*waited)
    # Changes with ids below pruned_below() are gone; a watcher at pruned_below() - 1
    # has seen everything up to there and loses nothing.
    if since and since < pruned_below() - 1:
        raise Gone(
            f"resourceVersion {since} is older than the watch history kept",
            [
                {
                    "field": "resourceVersion",
                    "fix": "list again and watch from the list's resourceVersion",
                }
            ],
        )
    current = current_version()
    if since > current:
        raise Gone(
            f"resourceVersion {since} is ahead of the server's {current} (was the database replaced?)",
            [{"field": "resourceVersion", "fix": "list again and watch from the list's resourceVersion"}],
        )
    deadline = time.monotonic() + timeout
    while True:
        rows, since = changes_after(kind, since, selector, node_name)
        if rows:
            return _answer(rows, rows[-1].id)
        if settings.FLOTILLA_WATCH_HUB:
            # Caught up with the database: wait in memory with every other watcher,
            # giving the database connection back first (to the pool, under PostgreSQL).
            connection.close()
            waited = hub.wait(kind, since, max(0.0, deadline - time.monotonic()), selector, node_name, LIMIT)
            if waited is not None:
                found, since = waited
                return _answer(found, since)
        if time.monotonic() >= deadline:
            return {"events": [], "resourceVersion": str(max(since, current_version()))}
        time.sleep(POLL_SECONDS)


def _answer(rows: list[Any], version: int) -> dict[str, Any]:
    return {"events": [{"type": r.type, "object": r.object} for r in rows], "resourceVersion": str(version)}


def prune() -> int:
    """Drop watch history beyond the retention; remember where it now starts."""
    keep_from = current_version() - settings.FLOTILLA_WATCH_RETENTION
    if keep_from <= pruned_below():
        return 0
    deleted, _ = Change.objects.filter(id__lt=keep_from).delete()
    Counter.objects.update_or_create(name=PRUNED_COUNTER, defaults={"value": keep_from})
    return deleted
