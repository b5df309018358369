"""One reader of the change log per web process, shared by every long-poll in it.

Without it each waiting watch polls the database five times a second; a
thousand agents would make five thousand queries a second to learn that
nothing happened. The hub's thread reads new ``Change`` rows once per tick,
keeps the most recent ones in memory, and wakes the waiting requests, which
then filter what they need without touching the database.

A watch whose ``since`` is older than what the hub keeps is answered from the
database first (``controlplane.watch``), then waits here. This module reads the
log itself (``latest_change`` lives here, and ``controlplane.watch`` uses it
from here), so it never imports ``controlplane.watch`` back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from django.db import DatabaseError, close_old_connections, connection
from django.db.models import Max

log = logging.getLogger(__name__)


def latest_change() -> int:
    """The highest id in the change log (0 when it is empty)."""
    from controlplane.models import Change

    return Change.objects.aggregate(top=Max("id"))["top"] or 0


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


@dataclass(eq=False)  # identity equality: waiters live in sets
class Waiter:
    """One long-poll waiting for changes of a kind (and node) after ``since``."""

    kind: str
    node_name: str | None
    selector: dict[str, str]
    since: int
    limit: int
    found: list[Seen] = field(default_factory=list)
    event: threading.Event = field(default_factory=threading.Event)

    def offer(self, seen: Seen) -> None:
        if (
            seen.id > self.since
            and len(self.found) < self.limit
            and seen.matches(self.kind, self.selector, self.node_name)
        ):
            self.found.append(seen)
            self.event.set()


class WatchHub:
    """The reader thread hands each new change to the waiters registered for its kind
    and node, so a change costs O(interested waiters), not O(all waiters × buffer)."""

    def __init__(self, poll_seconds: float = 0.1, keep: int = 20_000, batch: int = 2_000):
        self.poll_seconds = poll_seconds
        self.batch = batch
        self.buffer: deque[Seen] = deque(maxlen=keep)
        self.condition = threading.Condition()
        self.latest: int | None = None  # highest change id read
        self.floor: int | None = None  # every change after this id is in the buffer
        self.waiters: dict[tuple[str, str | None], set[Waiter]] = {}
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
        fields = ("id", "kind", "type", "node_name", "object")
        return [Seen(*row) for row in rows.values_list(*fields)]

    def _deliver(self, rows: list[Seen]) -> None:
        for seen in rows:
            for key in ((seen.kind, seen.node_name), (seen.kind, None)):
                for waiter in self.waiters.get(key, ()):
                    waiter.offer(seen)

    def _run(self) -> None:
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
                        self._deliver(rows)
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

    def covers(self, since: int) -> bool:
        """Whether every change after ``since`` is in the buffer or yet to be read, so a
        watch from there needs nothing from the database (the steady state of an agent)."""
        self.ensure_running()
        with self.condition:
            return self.floor is not None and self.latest is not None and self.floor <= since <= self.latest

    def _newer(self, since: int, waiter: Waiter) -> None:
        """Offer the buffered changes after ``since``, scanning from the newest end only."""
        tail = []
        for seen in reversed(self.buffer):
            if seen.id <= since:
                break
            tail.append(seen)
        for seen in reversed(tail):
            waiter.offer(seen)

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
        waiter = Waiter(kind, node_name, selector, since, limit)
        key = (kind, node_name)
        with self.condition:
            while self.latest is None:  # the hub's first read
                if not self.condition.wait(max(0.0, deadline - time.monotonic())):
                    return None
            if since < self.floor:
                return None
            self._newer(since, waiter)
            if waiter.found:
                return waiter.found, waiter.found[-1].id
            self.waiters.setdefault(key, set()).add(waiter)
        try:
            waiter.event.wait(max(0.0, deadline - time.monotonic()))
        finally:
            with self.condition:
                self.waiters[key].discard(waiter)
                if not self.waiters[key]:
                    del self.waiters[key]
                latest = self.latest
                found = list(waiter.found)
        if found:
            return found, found[-1].id
        return [], max(since, latest)


hub = WatchHub()
