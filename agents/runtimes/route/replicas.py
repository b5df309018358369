"""The replica set: each replica's state, load and cache contents, kept fresh by one thread.

The router scores replicas by what they hold, but a replica's own report (``GET /cache``)
is up to a poll old; so each replica also carries the router's record of the block hashes
it sent there. A prefix just routed counts at once, and the record gives way to the
replica's report once that report is new enough to include it. A replica whose
``uptimeSeconds`` went down restarted with an empty cache: the record is dropped.

Load is corrected the same way: the requests a replica reports queued and running
include the router's own that have finished since, and those are taken off, so a
stale report does not make an idle replica look busy.

A replica is ``pending`` until its first ``GET /health`` answers, ``ready`` while it
serves, and ``down`` after a failure until ``/health`` answers again (probed here).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Collection, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from plugins.types import ReplicaLoad, RouteRequest

log = logging.getLogger("flotilla.route.replicas")
PENDING, READY, DOWN = "pending", "ready", "down"
POLL_SECONDS = 0.5
PROBE_TIMEOUT = 1.0
CONNECT_TIMEOUT = 2.0
# A non-streamed completion sends nothing until it is whole, so the read timeout is a
# generation's length, not a network's.
READ_TIMEOUT = 300.0
# The record of routed blocks per replica: enough for a large cache, bounded so that a
# replica which never reports (no /cache) cannot grow it without end.
MAX_ROUTED_BLOCKS = 65536
# A block routed this long before a /cache report was fetched should be in it, if the
# replica kept it; younger ones may still be in prefill and stay in the record.
ROUTED_GRACE_SECONDS = 5.0
POLL_WORKERS = 8


class Replica:
    """One replica. Its counters and state change under the set's lock; ``client`` (pooled
    connections to the replica) is thread-safe."""

    def __init__(self, name: str, url: str):
        self.name, self.url = name, url.rstrip("/")
        self.client = httpx.Client(
            base_url=self.url,
            timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT),
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=64),
            trust_env=False,  # replicas are reached directly, never through a proxy from the environment
        )
        self.state = PENDING
        self.in_flight = 0
        self.outcomes: Counter[str] = Counter()
        self.failures = 0
        self.waiting = self.running = self.kv_blocks_free = 0
        # The router's requests to it that finished since the /stats request in progress was
        # sent, and since the one the numbers above answered was sent.
        self.finished_since_poll = self.finished_since_report = 0
        self.uptime: float | None = None
        self.reported: frozenset[int] = frozenset()
        self.reports_cache: bool | None = None
        self.routed: OrderedDict[int, float] = OrderedDict()
        self.last_error: str | None = None
        self.removed = False

    def reported_load(self) -> tuple[int, int]:
        """Queued and running as reported, less the router's own requests finished since."""
        gone = self.finished_since_report
        running = max(0, self.running - gone)
        return max(0, self.waiting - max(0, gone - self.running)), running

    def holds(self, hashes: Iterable[int]) -> frozenset[int]:
        """Which of ``hashes`` the replica reported or the router sent it since."""
        return frozenset(h for h in hashes if h in self.reported or h in self.routed)

    def record(self, hashes: Iterable[int], now: float) -> None:
        for name in hashes:
            self.routed[name] = now
            self.routed.move_to_end(name)
        while len(self.routed) > MAX_ROUTED_BLOCKS:
            self.routed.popitem(last=False)

    def forget_routed_before(self, cutoff: float) -> None:
        while self.routed and next(iter(self.routed.values())) < cutoff:
            self.routed.popitem(last=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": self.url,
            "state": self.state,
            "inFlight": self.in_flight,
            "requests": dict(self.outcomes),
            "requestsTotal": sum(self.outcomes.values()),
            "failures": self.failures,
            "waiting": self.waiting,
            "running": self.running,
            "kvBlocksFree": self.kv_blocks_free,
            "reportsCache": self.reports_cache,
            "reportedBlocks": len(self.reported),
            "routedBlocks": len(self.routed),
            "lastError": self.last_error,
        }


class ReplicaSet:
    """The replicas a router may send to, by name, and the thread that keeps their state."""

    def __init__(self, block_size: int, model_key: str | None = None, poll_seconds: float = POLL_SECONDS):
        """``model_key`` is the model source the router seeds its hashes with; a replica
        reporting another one names its blocks differently, and its report is ignored."""
        self.block_size = block_size
        self.model_key = model_key
        self.poll_seconds = poll_seconds
        self._lock = threading.Lock()
        self._replicas: dict[str, Replica] = {}
        self._wake = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=POLL_WORKERS, thread_name_prefix="replica-poll")

    # --- membership ------------------------------------------------------------------

    def replace(self, backends: Mapping[str, str]) -> None:
        """Make the set exactly ``backends`` (name to URL). A replica whose URL changed is a
        new one; one that left is closed once its last request finishes."""
        closing: list[Replica] = []
        with self._lock:
            for name, replica in list(self._replicas.items()):
                if backends.get(name, "").rstrip("/") != replica.url:
                    del self._replicas[name]
                    replica.removed = True
                    if replica.in_flight == 0:
                        closing.append(replica)
                    log.info("replica %s (%s) left the set", name, replica.url)
            for name, url in backends.items():
                if name not in self._replicas:
                    self._replicas[name] = Replica(name, url)
                    log.info("replica %s (%s) joined the set", name, url)
        for replica in closing:
            replica.client.close()
        self._wake.set()

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._replicas)

    # --- the request path --------------------------------------------------------------

    def loads(self, request: RouteRequest, exclude: Collection[str] = ()) -> list[ReplicaLoad]:
        """The ready replicas not in ``exclude``, as the cache plugin sees them.

        ``cached_hashes`` holds the request's own blocks among those the replica holds:
        a policy asks only about those, and copying a whole cache's worth of names per
        replica per request would cost more than the routing itself."""
        with self._lock:
            return [
                ReplicaLoad(
                    r.name,
                    r.url,
                    *r.reported_load(),
                    free_blocks=r.kv_blocks_free,
                    cached_hashes=r.holds(request.block_hashes),
                    in_flight=r.in_flight,
                )
                for r in self._replicas.values()
                if r.state == READY and r.name not in exclude
            ]

    def begin(self, name: str, hashes: list[int]) -> Replica | None:
        """Count a request in flight to ``name`` and record the blocks sent there; None if
        the replica left the set or went down since the plugin chose it."""
        with self._lock:
            replica = self._replicas.get(name)
            if replica is None or replica.state != READY:
                return None
            replica.in_flight += 1
            replica.record(hashes, time.monotonic())
            return replica

    def end(self, replica: Replica, outcome: str) -> None:
        with self._lock:
            replica.in_flight -= 1
            replica.finished_since_poll += 1
            replica.finished_since_report += 1
            replica.outcomes[outcome] += 1
            close = replica.removed and replica.in_flight == 0
        if close:
            replica.client.close()

    def mark_down(self, replica: Replica, reason: str) -> None:
        """Leave ``replica`` out until its /health answers again."""
        with self._lock:
            replica.last_error = reason
            if replica.state == DOWN:
                return
            replica.state = DOWN
            replica.failures += 1
        log.warning("replica %s is down: %s", replica.name, reason)
        self._wake.set()

    # --- state -------------------------------------------------------------------------

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self._replicas[name].as_dict() for name in sorted(self._replicas)]

    def ready_count(self) -> int:
        with self._lock:
            return sum(r.state == READY for r in self._replicas.values())

    def poll_once(self) -> None:
        """Ask every replica how it is, in parallel (a replica that hangs holds up only itself)."""
        with self._lock:
            replicas = list(self._replicas.values())
        list(self._pool.map(self._poll, replicas))

    def run(self, stop: threading.Event) -> None:
        """Poll until ``stop``; a change of membership or a replica going down polls at once."""
        while not stop.is_set():
            self._wake.clear()
            try:
                self.poll_once()
            except Exception:  # one bad answer must not end the thread that keeps every replica's state
                log.exception("polling the replicas failed")
            self._wake.wait(self.poll_seconds)

    def wake(self) -> None:
        self._wake.set()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            replicas = list(self._replicas.values())
        for replica in replicas:
            replica.client.close()

    def _poll(self, replica: Replica) -> None:
        if replica.removed:
            return
        seen = replica.state
        if seen != READY:
            try:
                health = replica.client.get("/health", timeout=PROBE_TIMEOUT)
            except httpx.HTTPError as exc:
                self._unreachable(replica, f"GET /health: {describe(exc)}")
                return
            if health.status_code != 200:
                self._unreachable(replica, f"GET /health: HTTP {health.status_code}")
                return
        with self._lock:
            replica.finished_since_poll = 0
        try:
            stats = replica.client.get("/stats", timeout=PROBE_TIMEOUT)
        except httpx.TransportError as exc:
            self._unreachable(replica, f"GET /stats: {describe(exc)}")
            return
        try:
            numbers = stats.json() if stats.status_code == 200 else None
        except ValueError:
            numbers = None
        fetched = time.monotonic()
        report = self._cache_report(replica)
        with self._lock:
            if not isinstance(numbers, dict):
                replica.last_error = f"GET /stats: HTTP {stats.status_code}, not a JSON object"
                numbers = {}
            uptime = _number(numbers.get("uptimeSeconds"))
            if uptime is not None and replica.uptime is not None and uptime < replica.uptime:
                log.info(
                    "replica %s restarted: its cache is empty, the router's record dropped", replica.name
                )
                replica.routed.clear()
                replica.reported = frozenset()
            replica.uptime = uptime if uptime is not None else replica.uptime
            replica.waiting = int(_number(numbers.get("waiting")) or 0)
            replica.running = int(_number(numbers.get("running")) or 0)
            replica.kv_blocks_free = int(_number(numbers.get("kvBlocksFree")) or 0)
            replica.finished_since_report = replica.finished_since_poll
            replica.reports_cache = report is not None
            if report is not None:
                replica.reported = report
                replica.forget_routed_before(fetched - ROUTED_GRACE_SECONDS)
            else:
                replica.reported = frozenset()
            # Unless a request found it down meanwhile: then the next probe decides.
            if seen != READY and replica.state == seen and not replica.removed:
                log.info("replica %s (%s) is ready", replica.name, replica.url)
                replica.state = READY

    def _unreachable(self, replica: Replica, reason: str) -> None:
        with self._lock:
            replica.last_error = reason
            was = replica.state
            if was == READY:
                replica.failures += 1
            replica.state = DOWN
        if was != DOWN:
            log.warning("replica %s is down: %s", replica.name, reason)

    def _cache_report(self, replica: Replica) -> frozenset[int] | None:
        """The block hashes the replica reports holding; None when it reports nothing (no
        /cache route, an error, a 401 where keys are set, or blocks of another size or model,
        whose names mean other blocks)."""
        try:
            response = replica.client.get("/cache", timeout=PROBE_TIMEOUT)
            if response.status_code != 200:
                return None
            body = response.json()
        except (httpx.HTTPError, ValueError):
            return None
        if not isinstance(body, dict) or not isinstance(body.get("hashes"), list):
            return None
        size, key = body.get("blockSize", self.block_size), body.get("modelKey", self.model_key)
        if size != self.block_size or (self.model_key is not None and key != self.model_key):
            if replica.reports_cache is not False:
                log.warning(
                    "replica %s names blocks of %s tokens of %r, the router of %d tokens of %r: "
                    "its report is ignored", replica.name, size, key, self.block_size, self.model_key,
                )  # fmt: skip
            return None
        return frozenset(h for h in body["hashes"] if isinstance(h, int) and not isinstance(h, bool))


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def describe(exc: Exception) -> str:
    """An httpx error in a few words (its message is often empty)."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
