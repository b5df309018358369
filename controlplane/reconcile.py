"""Run one reconcile: drop the queued flag, take the object's lock, call its controller."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings

from controlplane import dispatch, leases
from controlplane.controllers import clusters, owners
from controlplane.errors import TemporaryError
from controlplane.models import Resource

CONTROLLERS: dict[str, Callable[[str, str], None]] = {
    "Deployment": owners.reconcile,
    "TrainingJob": owners.reconcile,
    "Cluster": lambda kind, name: clusters.reconcile(name),
}


def run(kind: str, name: str) -> None:
    # Dropped before reading state, so a write after our read enqueues a fresh pass.
    leases.release(f"queued:{kind}/{name}")
    controller = CONTROLLERS.get(kind)
    if controller is None:
        return
    with leases.held(f"lock:{kind}/{name}", settings.FLOTILLA_RECONCILE_LOCK_SECONDS) as mine:
        if not mine:
            raise TemporaryError(f"{kind}/{name} is being reconciled elsewhere", delay=1.0)
        controller(kind, name)


def resync() -> int:
    from controlplane import watch

    watch.prune()
    count = 0
    for kind, name in Resource.objects.filter(kind__in=list(CONTROLLERS)).values_list("kind", "name"):
        count += dispatch.enqueue(kind, name)
    return count
