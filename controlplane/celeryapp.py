"""The Celery app: ``celery -A controlplane.celeryapp worker`` and ``… beat``."""

from __future__ import annotations

import gc
import os

from celery import Celery
from celery.signals import worker_process_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")

app = Celery("flotilla")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_ignore_result=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    task_serializer="json",
    accept_content=["json"],
)
app.autodiscover_tasks(["controlplane", "controlplane.telemetry"])


@worker_process_init.connect
def _freeze_startup_objects(**_: object) -> None:
    """Keep what the worker imported at start out of every later garbage collection.

    A reconcile at fleet scale builds ~10,000 short-lived objects (one per GPU in its
    snapshot), which sets off full collections; each one walked Django's and the
    plugins' hundred thousand long-lived objects too. Measured on 1,250 nodes and
    PostgreSQL: mean reconcile 67 -> 52 ms, p90 136 -> 58 ms. (The same advice the
    ``gc.freeze`` documentation gives for pre-fork servers, for copy-on-write.)
    """
    gc.freeze()
