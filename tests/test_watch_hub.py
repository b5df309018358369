"""The watch hub with real commits: its thread reads the change log on its own
connection, so these tests use transactional_db (committed data), not the usual
rolled-back transaction."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection

from controlplane import watch
from controlplane.apply import apply
from controlplane.controllers import nodes
from controlplane.watch_hub import WatchHub
from tests.conftest import deployment, simulated_devices

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def fresh_hub(settings, monkeypatch):
    settings.FLOTILLA_WATCH_HUB = True
    hub = WatchHub(poll_seconds=0.05)
    monkeypatch.setattr(watch, "hub", hub)
    yield hub
    hub.stop()


def wait_in_thread(*args) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def run() -> None:
        started = time.monotonic()
        try:
            result["answer"] = watch.wait(*args)
            result["seconds"] = time.monotonic() - started
        finally:
            connection.close()  # this thread's own connection

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def test_a_waiting_watch_is_woken_by_a_commit_from_elsewhere(fresh_hub):
    since = watch.current_version()
    thread, result = wait_in_thread("Deployment", since, 10, {}, None)
    time.sleep(0.5)  # the watch is now waiting in the hub
    apply([deployment("woken", replicas=1)], actor="test")
    thread.join(timeout=10)
    events = result["answer"]["events"]
    assert [e["object"]["metadata"]["name"] for e in events] == ["woken"]
    assert result["seconds"] < 3, "woken by the hub, not by the timeout"
    assert fresh_hub.latest is not None and fresh_hub.latest >= int(result["answer"]["resourceVersion"])


def test_the_hub_hands_each_watch_only_what_it_asked_for(fresh_hub):
    nodes.register("gpu-a", cluster=None, labels={}, devices=simulated_devices(1), info={})
    since = watch.current_version()
    thread, result = wait_in_thread("Workload", since, 2, {}, "gpu-b")
    time.sleep(0.3)
    apply([deployment("elsewhere", replicas=1)], actor="test")  # a Deployment, not a Workload on gpu-b
    thread.join(timeout=10)
    assert result["answer"]["events"] == []
    assert int(result["answer"]["resourceVersion"]) >= since
    assert result["seconds"] >= 1.5, "a watch with nothing to see waits out its timeout"


def test_a_watch_from_before_the_hub_started_is_answered_from_the_database(fresh_hub):
    since = watch.current_version()
    apply([deployment("earlier", replicas=1)], actor="test")
    fresh_hub.ensure_running()
    time.sleep(0.3)  # the hub now starts after the change
    answer = watch.wait("Deployment", since, 1, {}, None)
    assert [e["object"]["metadata"]["name"] for e in answer["events"]] == ["earlier"]
