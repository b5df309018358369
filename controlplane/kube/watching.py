"""What node discovery and the Pod executor share: one watch pass, 410 Gone, backoff.

Each watches a different list (Nodes, its Pods) and applies events its own way; the
stream handling -- the last resourceVersion seen, bookmarks, ``410 Gone`` as
:class:`Expired`, a stop event -- is written once here. The kubernetes client is
imported inside the functions: the owner controller imports the executor's module, and
the client takes a third of a second to import.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from common.envhelpers import ConfigError

WATCHED = frozenset({"ADDED", "MODIFIED", "DELETED"})


class Expired(Exception):
    """The watch's resourceVersion is older than the server's history: list again."""


def watch_pass(
    list_call: Callable[..., Any],
    version: str,
    apply: Callable[[str, dict[str, Any]], str],
    timeout_seconds: int,
    stop: threading.Event | None = None,
    **list_args: Any,
) -> tuple[str, Counter[str]]:
    """Watch ``list_call`` from ``version`` until the server ends the watch (or ``stop``
    is set), passing each change to ``apply`` (which names what it did, for the counts);
    return the last version seen. Raises Expired when the server answers 410 Gone."""
    from kubernetes import watch
    from kubernetes.client.exceptions import ApiException

    watcher = watch.Watch()
    counts: Counter[str] = Counter()
    try:
        for event in watcher.stream(
            list_call,
            resource_version=version,
            timeout_seconds=timeout_seconds,
            allow_watch_bookmarks=True,
            **list_args,
        ):
            obj = event["raw_object"]
            version = obj["metadata"].get("resourceVersion") or version
            if event["type"] in WATCHED:
                counts[apply(event["type"], obj)] += 1
            if stop is not None and stop.is_set():
                watcher.stop()
    except ApiException as exc:
        if exc.status == 410:
            raise Expired(f"resourceVersion {version} expired") from None
        raise
    return version, counts


def backoff(failures: int) -> float:
    """Seconds to wait after ``failures`` failures in a row: doubling to a minute, jittered."""
    return min(60.0, 2.0 ** min(failures, 6)) * random.uniform(0.5, 1.5)


def describe(exc: BaseException) -> str:
    """An error for the log: only an API error's status and reason (its text carries the
    response headers), a configuration error's message, else the error's class."""
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    if isinstance(exc, ConfigError):
        return str(exc)
    return type(exc).__name__
