"""Writers take their locks in one order, so concurrent writers queue instead of deadlocking.

The CI failure this guards against: the API's DELETE locked a Deployment's row and
then the resourceVersion counter, while the owner controller held the counter
(``store.lock_writes``) and then wrote the same Deployment. PostgreSQL found the
cycle and killed the DELETE, which the operator saw as a 500. Real commits on real
connections (one per thread), hence transactional_db.
"""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection, transaction

from common.specs import KINDS
from controlplane import store
from controlplane.api import delete
from controlplane.apply import apply
from tests.conftest import deployment

pytestmark = pytest.mark.django_db(transaction=True)


def in_thread(work, outcome: dict, key: str) -> threading.Thread:
    def run() -> None:
        try:
            outcome[key] = work()
        except Exception as exc:  # reported by the test's assertions
            outcome[key] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_delete_during_a_controller_pass_waits_for_it_instead_of_deadlocking():
    apply([deployment("locked", replicas=1)], actor="test")
    controller_holds_counter = threading.Event()
    outcome: dict = {}

    def controller_pass() -> str:
        # What owners.reconcile does: the writers' lock first, then the owner's row.
        with transaction.atomic():
            store.lock_writes()
            controller_holds_counter.set()
            time.sleep(0.5)  # the DELETE arrives meanwhile
            owner = store.find("Deployment", "locked")
            store.update_status(owner, {**owner.status, "observedGeneration": owner.generation})
        return "written"

    def api_delete() -> int:
        controller_holds_counter.wait(5)
        return delete(KINDS["Deployment"], "locked", "test").status_code

    threads = [in_thread(controller_pass, outcome, "controller"), in_thread(api_delete, outcome, "delete")]
    for thread in threads:
        thread.join(timeout=30)
    assert outcome == {"controller": "written", "delete": 202}, outcome
    assert store.get("Deployment", "locked").deletion_timestamp is not None


def test_lock_writes_spends_no_resource_version():
    apply([deployment("counted", replicas=1)], actor="test")
    before = store.Counter.objects.get(name=store.RV_COUNTER).value
    with transaction.atomic():
        store.lock_writes()
        store.get("Deployment", "counted", for_update=True)
    assert store.Counter.objects.get(name=store.RV_COUNTER).value == before
