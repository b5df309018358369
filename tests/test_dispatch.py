"""dispatch.enqueue sends the reconcile task by its registered name, once per object while queued."""

from __future__ import annotations

import pytest

from controlplane import dispatch, leases, tasks
from controlplane.celeryapp import app

pytestmark = pytest.mark.django_db


@pytest.fixture
def sent(monkeypatch) -> list[tuple[str, list, float | None]]:
    messages: list[tuple[str, list, float | None]] = []

    def send_task(name: str, args: list, countdown: float | None = None):
        messages.append((name, args, countdown))

    monkeypatch.setattr(app, "send_task", send_task)
    return messages


def test_the_name_it_sends_is_the_one_the_reconcile_task_is_registered_under():
    assert tasks.reconcile.name == dispatch.RECONCILE_TASK
    assert dispatch.RECONCILE_TASK in app.tasks  # what a worker finds by the name


def test_enqueue_sends_a_reconcile_of_the_object(sent):
    assert dispatch.enqueue("Deployment", "chat") is True
    assert dispatch.enqueue("Cluster", "lab", countdown=1) is True
    assert sent == [
        (dispatch.RECONCILE_TASK, ["Deployment", "chat"], None),
        (dispatch.RECONCILE_TASK, ["Cluster", "lab"], 1),
    ]


def test_a_second_enqueue_while_queued_is_dropped_until_the_reconcile_starts(sent):
    assert dispatch.enqueue("Deployment", "chat") is True
    assert dispatch.enqueue("Deployment", "chat") is False
    leases.release("queued:Deployment/chat")  # what controlplane.reconcile.run does first
    assert dispatch.enqueue("Deployment", "chat") is True
    assert len(sent) == 2


def test_a_broker_that_is_down_fails_no_write_and_leaves_the_object_enqueueable(monkeypatch):
    def down(*args, **kwargs):
        raise ConnectionError("broker unreachable")

    monkeypatch.setattr(app, "send_task", down)
    assert dispatch.enqueue("Deployment", "chat") is False
    monkeypatch.setattr(app, "send_task", lambda *args, **kwargs: None)
    assert dispatch.enqueue("Deployment", "chat") is True
