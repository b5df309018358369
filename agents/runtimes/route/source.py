"""Where the router's replicas come from: ``--backend`` flags, or its own Workload.

Static: the URLs given, named by themselves (benchmarks, tests, a router run by hand).

Watch: the agent starts a router Workload with ``FLOTILLA_URL``, ``FLOTILLA_TOKEN`` (the
node's token), ``FLOTILLA_NODE`` and ``FLOTILLA_WORKLOAD`` (the router's own Workload).
The router long-polls the control plane's watch of the Workloads bound to its node, which
is all a node token may read, and takes its replicas from its own Workload's
``status.backends``, ``[{"name": <workload>, "url": <endpoint>}, ...]``, that the owner
controller keeps. It resumes from the last resourceVersion, lists again after 410 Gone,
backs off while the control plane is away, and keeps routing to the replicas it last
heard of meanwhile.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

from agents.agent import WATCH_SECONDS, backoff
from agents.runtimes.route.replicas import ReplicaSet
from common.client import Client, ClientError

log = logging.getLogger("flotilla.route.source")


def check_url(url: str, what: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise SystemExit(f"{what} {url!r} must be an http:// or https:// URL")
    return url.rstrip("/")


class StaticSource:
    """The replicas named on the command line; they never change."""

    def __init__(self, urls: list[str]):
        self.urls = list(dict.fromkeys(check_url(u, "--backend") for u in urls))

    def start(self, replicas: ReplicaSet, stop: threading.Event) -> None:
        replicas.replace({url: url for url in self.urls})

    def describe(self) -> dict[str, Any]:
        return {"kind": "static", "backends": self.urls}


@dataclass(frozen=True)
class WatchSettings:
    url: str
    token: str
    node: str
    workload: str

    def __repr__(self) -> str:  # the token never reaches a log line
        return f"WatchSettings(url={self.url!r}, node={self.node!r}, workload={self.workload!r})"


def watch_settings() -> WatchSettings | None:
    """The watch settings from the environment the agent gives a router Workload; None when
    none is set; SystemExit naming the missing ones when only some are."""
    values = {
        "FLOTILLA_URL": os.environ.get("FLOTILLA_URL", ""),
        "FLOTILLA_TOKEN": os.environ.get("FLOTILLA_TOKEN", ""),
        "FLOTILLA_NODE": os.environ.get("FLOTILLA_NODE", ""),
        "FLOTILLA_WORKLOAD": os.environ.get("FLOTILLA_WORKLOAD", ""),
    }
    if not values["FLOTILLA_URL"] and not values["FLOTILLA_WORKLOAD"]:
        return None
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise SystemExit(
            f"watch mode needs {', '.join(missing)} as well (the agent sets all four for a router Workload)"
        )
    return WatchSettings(
        url=check_url(values["FLOTILLA_URL"], "FLOTILLA_URL"),
        token=values["FLOTILLA_TOKEN"],
        node=values["FLOTILLA_NODE"],
        workload=values["FLOTILLA_WORKLOAD"],
    )


def backends_of(document: dict[str, Any] | None) -> dict[str, str]:
    """Replica name to URL from a router Workload's ``status.backends``; malformed entries
    are left out (logged), so one bad entry cannot stop the router routing to the rest."""
    if document is None:
        return {}
    entries = (document.get("status") or {}).get("backends") or []
    if not isinstance(entries, list):
        log.warning("status.backends is not a list: ignored")
        return {}
    backends: dict[str, str] = {}
    for i, entry in enumerate(entries):
        name = entry.get("name") if isinstance(entry, dict) else None
        url = entry.get("url") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name or not isinstance(url, str):
            log.warning("status.backends[%d] is not {name, url}: left out", i)
            continue
        if not url.startswith(("http://", "https://")):
            log.warning("status.backends[%d].url %r is not an http(s) URL: left out", i, url)
            continue
        backends[name] = url.rstrip("/")
    return backends


class WatchSource:
    """The router's own Workload, watched on the control plane."""

    def __init__(self, settings: WatchSettings):
        self.settings = settings
        self.connected = False
        self.last_error: str | None = None
        self.resource_version: str | None = None
        self._backends: dict[str, str] | None = None

    def start(self, replicas: ReplicaSet, stop: threading.Event) -> None:
        thread = threading.Thread(target=self.run, args=(replicas, stop), name="watch", daemon=True)
        thread.start()

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "watch",
            "controlPlane": self.settings.url,
            "node": self.settings.node,
            "workload": self.settings.workload,
            "connected": self.connected,
            "resourceVersion": self.resource_version,
            "lastError": self.last_error,
        }

    def run(self, replicas: ReplicaSet, stop: threading.Event) -> None:
        client = Client(self.settings.url, self.settings.token, timeout=WATCH_SECONDS + 20)
        selector = f"spec.nodeName={self.settings.node}"
        failures = 0
        try:
            while not stop.is_set():
                try:
                    if self.resource_version is None:
                        listing = client.list("workloads", fieldSelector=selector)
                        own = [w for w in listing["items"] if w["metadata"]["name"] == self.settings.workload]
                        if not own:
                            log.warning(
                                "workload %s is not bound to node %s (yet): no replicas",
                                self.settings.workload, self.settings.node,
                            )  # fmt: skip
                        self._apply(replicas, own[0] if own else None)
                        self.resource_version = str(listing["metadata"]["resourceVersion"])
                    else:
                        result = client.watch(
                            "workloads", self.resource_version, WATCH_SECONDS, fieldSelector=selector
                        )
                        for event in result["events"]:
                            document = event["object"]
                            if document["metadata"]["name"] == self.settings.workload:
                                self._apply(replicas, None if event["type"] == "DELETED" else document)
                        self.resource_version = str(result["resourceVersion"])
                    failures, self.connected, self.last_error = 0, True, None
                except ClientError as exc:
                    if exc.status == 410:
                        self.resource_version = None  # the history is gone: list again
                        continue
                    failures += 1
                    self._failed(f"{exc}".splitlines()[0], failures, stop)
                except (KeyError, TypeError, AttributeError) as exc:
                    failures += 1
                    self._failed(f"malformed answer from the watch API ({exc!r})", failures, stop)
        finally:
            client.close()

    def _failed(self, reason: str, failures: int, stop: threading.Event) -> None:
        self.connected, self.last_error = False, reason
        wait = backoff(failures)
        log.warning(
            "watch failed (%s); routing to the replicas last heard of; retrying in %.1fs", reason, wait
        )
        stop.wait(wait)

    def _apply(self, replicas: ReplicaSet, document: dict[str, Any] | None) -> None:
        backends = backends_of(document)
        if backends != self._backends:
            log.info(
                "replicas from workload %s: %s", self.settings.workload, ", ".join(sorted(backends)) or "none"
            )
            self._backends = backends
            replicas.replace(backends)
