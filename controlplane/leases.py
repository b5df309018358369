"""Leases with expiry, in the database so every worker process sees them.

A lease whose holder crashed lapses after its TTL, so a killed worker never
blocks an object for longer than that.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from django.db import IntegrityError, transaction

from common.timeutil import now
from controlplane.models import Lease


def acquire(key: str, ttl: float) -> str | None:
    """Take the lease; return a holder token, or None while someone else holds it."""
    holder = str(uuid.uuid4())
    expires = now() + timedelta(seconds=ttl)
    with transaction.atomic():
        taken = Lease.objects.filter(key=key, expires_at__lt=now()).update(holder=holder, expires_at=expires)
        if taken:
            return holder
        try:
            with transaction.atomic():
                Lease.objects.create(key=key, holder=holder, expires_at=expires)
        except IntegrityError:
            return None
    return holder


def release(key: str, holder: str | None = None) -> None:
    queryset = Lease.objects.filter(key=key)
    if holder is not None:
        queryset = queryset.filter(holder=holder)
    queryset.delete()


@contextmanager
def held(key: str, ttl: float) -> Iterator[bool]:
    holder = acquire(key, ttl)
    try:
        yield holder is not None
    finally:
        if holder is not None:
            release(key, holder)
