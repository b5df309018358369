"""The resource store's tables.

Every kind lives in one ``Resource`` table, as in an etcd key space: the
envelope is the same for all kinds and the spec is validated by pydantic before
it gets here. ``Change`` is the watch log; its primary key *is* the global
resourceVersion, allocated under a row lock on ``Counter`` so that versions are
handed out in commit order (a watcher never skips a late-committing write).
"""

from __future__ import annotations

import uuid

from django.db import models


class Counter(models.Model):
    """One row per counter; ``resource_version`` serialises writers."""

    name = models.CharField(max_length=32, primary_key=True)
    value = models.BigIntegerField(default=0)


class Resource(models.Model):
    kind = models.CharField(max_length=32)
    name = models.CharField(max_length=63)
    uid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    generation = models.BigIntegerField(default=1)
    resource_version = models.BigIntegerField(default=0)
    labels = models.JSONField(default=dict)
    annotations = models.JSONField(default=dict)
    spec = models.JSONField(default=dict)
    status = models.JSONField(default=dict)
    finalizers = models.JSONField(default=list)
    owner_references = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)
    deletion_timestamp = models.DateTimeField(null=True, blank=True)
    # Denormalised from spec for the queries that run on every reconcile and watch.
    node_name = models.CharField(max_length=63, blank=True, default="", db_index=True)
    owner_uid = models.CharField(max_length=36, blank=True, default="", db_index=True)
    cluster = models.CharField(max_length=63, blank=True, default="", db_index=True)
    # A Workload's GPU indices ("0,1") and owner ("Deployment/chat-small"), so the
    # scheduler's view of what is taken needs no JSON decoding.
    gpu_indices = models.CharField(max_length=400, blank=True, default="")
    owner_ref = models.CharField(max_length=100, blank=True, default="")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["kind", "name"], name="unique_kind_name")]
        indexes = [models.Index(fields=["kind", "resource_version"])]

    def __str__(self) -> str:
        return f"{self.kind.lower()}/{self.name}"


class Change(models.Model):
    """One write to a resource; ``id`` is the resourceVersion it produced."""

    id = models.BigIntegerField(primary_key=True)
    kind = models.CharField(max_length=32)
    name = models.CharField(max_length=63)
    type = models.CharField(max_length=10)  # ADDED | MODIFIED | DELETED
    object = models.JSONField()
    node_name = models.CharField(max_length=63, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["kind", "id"])]


class Event(models.Model):
    """Who/what/why about an object, deduplicated like Kubernetes events."""

    kind = models.CharField(max_length=32)
    name = models.CharField(max_length=63)
    uid = models.CharField(max_length=36, blank=True, default="")
    type = models.CharField(max_length=8, default="Normal")  # Normal | Warning
    reason = models.CharField(max_length=64)
    message = models.TextField()
    source = models.CharField(max_length=64)
    count = models.IntegerField(default=1)
    first_seen = models.DateTimeField(auto_now_add=True)
    last_seen = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["kind", "name", "-last_seen"])]


class AuditEntry(models.Model):
    actor = models.CharField(max_length=128)
    verb = models.CharField(max_length=16)
    kind = models.CharField(max_length=32)
    name = models.CharField(max_length=63)
    summary = models.TextField(blank=True, default="")
    at = models.DateTimeField(auto_now_add=True, db_index=True)


class ApiToken(models.Model):
    """An API token stored as its public prefix and an HMAC of the whole token."""

    ROLES = ("viewer", "operator", "admin", "agent")

    name = models.CharField(max_length=128)
    prefix = models.CharField(max_length=16, unique=True)
    digest = models.CharField(max_length=64)
    role = models.CharField(max_length=16)
    node_name = models.CharField(max_length=63, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked = models.BooleanField(default=False)


class NodeLease(models.Model):
    """Heartbeats live here, not in the Node's status, so they do not flood the watch log."""

    node_name = models.CharField(max_length=63, primary_key=True)
    renewed_at = models.DateTimeField()


class Lease(models.Model):
    """A named lease with expiry: "lock:Kind/name" lets one reconcile run per object,
    "queued:Kind/name" coalesces enqueues. It lapses if its holder dies."""

    key = models.CharField(max_length=140, primary_key=True)
    holder = models.CharField(max_length=36)
    expires_at = models.DateTimeField()


class WorkloadLog(models.Model):
    """Chunks of a Workload's output, shipped by its agent; ``id`` orders them.

    Kept per Workload up to FLOTILLA_LOG_BYTES (oldest chunks go first), and for a
    while after the Workload is gone, so a crash can still be read afterwards.
    """

    workload = models.CharField(max_length=63)
    text = models.TextField()
    size = models.IntegerField()
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["workload", "id"])]
