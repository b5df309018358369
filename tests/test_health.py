"""The probe endpoints: /healthz (the process answers) and /readyz (database and broker answer)."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any
from unittest import mock

import pytest
from django.db import OperationalError, connections
from django.test import override_settings

from controlplane import api
from controlplane.celeryapp import app as celery_app


@pytest.fixture
def broker_conf(monkeypatch):
    """Change the Celery app's broker settings for one test, and put them back after.

    Celery reads the broker URL from CELERY_BROKER_URL before its configuration (CI's
    PostgreSQL + Redis pass sets it), so the variable is changed too."""
    saved: dict[str, Any] = {}

    def change(**values: Any) -> None:
        for key in values:
            saved.setdefault(key, celery_app.conf[key])
        if "broker_url" in values:
            monkeypatch.setenv("CELERY_BROKER_URL", values["broker_url"])
        celery_app.conf.update(values)

    yield change
    celery_app.conf.update(saved)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_it_is_ready_on_the_test_settings(client, db):
    response = client.get("/readyz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}


def test_it_needs_no_token(client, db):
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_it_names_the_database_when_the_database_fails(client, db):
    broken = OperationalError("connection to server at db.internal failed")
    with mock.patch.object(connections["default"], "cursor", side_effect=broken):
        response = client.get("/readyz")
        alive = client.get("/healthz")

    assert alive.status_code == 200  # liveness: a database outage must not restart web pods
    assert response.status_code == 503
    body = response.json()
    assert body["failed"] == ["database"]
    assert body["checks"] == {"database": "error: OperationalError", "broker": "ok"}
    assert "db.internal" not in response.content.decode()


def test_it_names_the_broker_when_the_broker_is_unreachable(client, db, broker_conf, monkeypatch, caplog):
    url = f"redis://flotilla:hunter2secret@127.0.0.1:{_closed_port()}/0"
    broker_conf(broker_url=url, broker_transport=None, broker_transport_options={})
    monkeypatch.setattr(api, "READY_BROKER_TIMEOUT", 0.5)

    with caplog.at_level(logging.WARNING, logger="controlplane.api"):
        response = client.get("/readyz")

    assert response.status_code == 503
    body = response.json()
    assert body["failed"] == ["broker"]
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["broker"].startswith("error: ")
    assert "hunter2secret" not in response.content.decode()
    assert "hunter2secret" not in caplog.text
    assert "broker check failed" in caplog.text


def test_it_names_the_broker_when_an_embedded_broker_folder_is_missing(client, db, broker_conf, tmp_path):
    folders = {key: str(tmp_path / key) for key in ("data_folder_in", "data_folder_out", "processed_folder")}
    for folder in folders.values():
        os.makedirs(folder)
    options = {**folders, "control_folder": str(tmp_path / "gone")}
    broker_conf(broker_url="filesystem://", broker_transport_options=options)

    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["checks"] == {"database": "ok", "broker": "error: OSError"}


def test_it_masks_passwords_in_urls_it_logs():
    text = "cannot reach redis://user:pa55word@redis:6379/0 or amqp://guest:guest@rabbit//"

    masked = api._URL_CREDENTIALS.sub(r"\1:***@", text)

    assert masked == "cannot reach redis://user:***@redis:6379/0 or amqp://guest:***@rabbit//"


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_probes_are_exempt_from_the_https_redirect(client, db, path):
    with override_settings(SECURE_SSL_REDIRECT=True):
        assert client.get(path).status_code == 200
        assert client.get("/api/v1/openapi.json").status_code == 301
