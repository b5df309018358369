"""List, then watch, Kubernetes Nodes, and mirror each into Flotilla (see ``mirror``).

The informer pattern without an informer: list (recording the list's resourceVersion),
watch from that version, and on ``410 Gone`` (the server no longer has the history)
list again, which marks whatever disappeared meanwhile, so nothing is lost. Objects are
read as plain JSON: deserialising every Node into the client's models costs far more
than the mirror itself on a large cluster.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from typing import Any

from django.db import DatabaseError, close_old_connections
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from controlplane.kube import mirror
from controlplane.kube.watching import Expired, backoff, describe, watch_pass

log = logging.getLogger(__name__)
PAGE = 500
WATCH_SECONDS = 300  # the server ends each watch after this long; the loop starts the next


def relist(api: client.CoreV1Api, cluster: str | None = None) -> tuple[str, Counter[str]]:
    """Mirror every Node, mark those gone since; return the list's resourceVersion."""
    items: list[dict[str, Any]] = []
    version, token = "", None
    while True:
        response = api.list_node(limit=PAGE, _continue=token, _preload_content=False)
        page = json.loads(response.data)
        # A paged list is one snapshot: the first page's version is the whole list's.
        version = version or page["metadata"].get("resourceVersion", "")
        items.extend(page.get("items") or [])
        token = page["metadata"].get("continue")
        if not token:
            break
    counts: Counter[str] = Counter(mirror.mirror(item, cluster) for item in items)
    present = {item["metadata"].get("uid") for item in items}
    for uid, name in mirror.linked_uids().items():
        if uid not in present:
            counts[mirror.forget({"metadata": {"uid": uid, "name": name}})] += 1
    return version, counts


def watch_once(
    api: client.CoreV1Api,
    version: str,
    cluster: str | None = None,
    timeout_seconds: int = WATCH_SECONDS,
    stop: threading.Event | None = None,
) -> tuple[str, Counter[str]]:
    """Apply the changes after ``version`` until the server ends the watch; return the
    last version seen. Raises Expired when the server answers 410 Gone."""

    def apply(event_type: str, obj: dict[str, Any]) -> str:
        return mirror.forget(obj) if event_type == "DELETED" else mirror.mirror(obj, cluster)

    return watch_pass(api.list_node, version, apply, timeout_seconds, stop)


def run(
    api: client.CoreV1Api,
    stop: threading.Event,
    cluster: str | None = None,
    timeout_seconds: int = WATCH_SECONDS,
) -> None:
    """List and watch until ``stop`` is set, re-listing after 410 and backing off on errors."""
    version: str | None = None
    failures = 0
    server = api.api_client.configuration.host
    while not stop.is_set():
        close_old_connections()  # a long-lived process: drop connections the database closed
        try:
            if version is None:
                version, counts = relist(api, cluster)
                log.info("listed Kubernetes nodes at %s (version %s): %s", server, version, dict(counts))
            version, counts = watch_once(api, version, cluster, timeout_seconds, stop)
            if counts:
                log.info("Kubernetes node changes: %s", dict(counts))
            failures = 0
        except Expired as exc:
            log.info("%s; listing again", exc)
            version = None
        except (ApiException, HTTPError, OSError, DatabaseError) as exc:
            failures += 1
            delay = backoff(failures)
            log.warning(
                "Kubernetes node sync against %s failed (%s); retrying in %.0fs", server, describe(exc), delay
            )
            version = None
            stop.wait(delay)
