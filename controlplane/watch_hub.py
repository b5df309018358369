"""One reader of the change log per web process, shared by every long-poll in it.

Without it each waiting watch polls the database five times a second; a
thousand agents would make five thousand queries a second to learn that
nothing happened. The hub's thread reads new ``Change`` rows once per tick,
keeps the most recent ones in memory, and wakes the waiting requests, which
then filter what they need without touching the database.

A watch whose ``since`` is older than what the hub keeps is answered from the
database first (``controlplane.watch``), then waits here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from django.db import DatabaseError, close_old_connections, connection

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Seen:
    id: int
    kind: str
    type: str
    node_name: str
    object: dict[str, Any]

    def matches(self, kind: str, selector: dict[str, str], node_name: str | None) -> bool:
        if self.kind != kind or (node_name is not None and self.node_name != node_name):
            return False
        labels = self.object.get("metadata", {}).get("labels", {})
        return all(labels.get(k) == v for k, v in selector.items())


class WatchHub:
    def __init__(self, poll_seconds: float = 0.1, keep: int = 20_000, batch: int = 2_000):
        self.poll_seconds = poll_seconds
        self.batch = batch
        self.buffer: deque[Seen] = deque(maxlen=keep)
        self.condition = threading.Condition()
        self.latest: int | None = None  # highest change id read
        self.floor: int | None = None  # every change after this id is in the buffer
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    def ensure_running(self) -> None:
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="watch-hub", daemon=True)
                self.thread.start()

    def _read(self, since: int) -> list[Seen]:
        from controlplane.models import Change

        rows = Change.objects.filter(id__gt=since).order_by("id")[: self.batch]
        return [
            Seen(r[0], r[1], r[2], r[3], r[4])
            for r in rows.values_list("id", "kind", "type", "node_name", "object")
        ]

    def _run(self) -> None:
        from controlplane.watch import latest_change

        while not self.stopping.is_set():
            try:
                if self.latest is None:
                    start = latest_change()
                    with self.condition:
                        self.latest = self.floor = start
                        self.condition.notify_all()
                rows = self._read(self.latest)
                if rows:
                    with self.condition:
                        self.buffer.extend(rows)
                        self.latest = rows[-1].id
                        if len(self.buffer) == self.buffer.maxlen:
                            self.floor = self.buffer[0].id - 1
                        self.condition.notify_all()
                if len(rows) < self.batch:
                    self.stopping.wait(self.poll_seconds)
            except DatabaseError:
                log.exception("watch hub: reading the change log failed; retrying")
                connection.close()
                time.sleep(1.0)
            finally:
                close_old_connections()
        connection.close()

    def stop(self, timeout: float = 5.0) -> None:
        """End the reader thread (tests; a web process simply exits)."""
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout)

    def wait(
        self,
        kind: str,
        since: int,
        timeout: float,
        selector: dict[str, str],
        node_name: str | None,
        limit: int,
    ) -> tuple[list[Seen], int] | None:
        """Matching changes after ``since`` (waiting up to ``timeout``), and the version to
        resume from; None when ``since`` is older than the buffer (ask the database)."""
        self.ensure_running()
        deadline = time.monotonic() + timeout
        with self.condition:
            while self.latest is None:  # the hub's first read
                if not self.condition.wait(max(0.0, deadline - time.monotonic())):
                    return None
            while True:
                if since < self.floor:
                    return None
                found = [s for s in self.buffer if s.id > since and s.matches(kind, selector, node_name)]
                if found:
                    return found[:limit], found[:limit][-1].id
                since = max(since, self.latest)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return [], since
                self.condition.wait(remaining)


hub = WatchHub()
