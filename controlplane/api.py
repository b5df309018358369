"""The REST API under /api/v1/ (plain Django views, JSON in and out).

The views are wrapped by ``controlplane.http.endpoint`` (token auth, roles, JSON
errors). Functions that do the work without a request (``delete``) return plain
outcomes, so the dashboard calls the same code and only the views build responses.
"""

from __future__ import annotations

import copy
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.http import HttpRequest, JsonResponse

from common.specs import BY_PLURAL, KindInfo, kind_for
from common.timeutil import rfc3339
from controlplane import apply as applier
from controlplane import auth, events, openapi, policies, power, scopes, store, users, watch, yamldocs
from controlplane.controllers import routers
from controlplane.errors import Conflict, Invalid, NotFound
from controlplane.http import endpoint, int_param, json_body, read_body
from controlplane.models import ApiToken, AuditEntry, Event
from plugins import manager

log = logging.getLogger(__name__)


def kind_info(plural: str) -> KindInfo:
    info = BY_PLURAL.get(plural)
    if info is None:
        raise NotFound(
            f"unknown resource type {plural!r}",
            [{"field": "kind", "fix": "use one of: " + ", ".join(BY_PLURAL)}],
        )
    return info


def parse_selector(text: str | None, what: str = "labelSelector") -> dict[str, str]:
    selector: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise Invalid(
                f"{what} term {part!r} is not key=value",
                [{"field": what, "fix": "write key=value[,key=value]"}],
            )
        selector[key.strip()] = value.strip().removeprefix("=")
    return selector


# --- resources ------------------------------------------------------------------------


@endpoint({"POST": "operator"})
def apply_view(request: HttpRequest) -> dict[str, Any]:
    documents = yamldocs.parse(
        read_body(request), settings.FLOTILLA_MAX_BODY_BYTES, settings.FLOTILLA_MAX_DOCUMENTS
    )
    dry_run = request.GET.get("dryRun", "").lower() in {"1", "true", "all"}
    outcomes = applier.apply(documents, actor=request.principal.name, dry_run=dry_run)
    return {"dryRun": dry_run, "results": [o.as_dict() for o in outcomes]}


@endpoint({"GET": "viewer"}, node_scoped_reads=True)
def collection_view(request: HttpRequest, plural: str) -> dict[str, Any]:
    info = kind_info(plural)
    selector = parse_selector(request.GET.get("labelSelector"))
    fields = parse_selector(request.GET.get("fieldSelector"), "fieldSelector")
    node_name = scopes.node_filter(request.principal, info.kind, fields.pop("spec.nodeName", None))
    if fields:
        raise Invalid(
            f"fieldSelector supports only spec.nodeName, not {', '.join(fields)}",
            [{"field": "fieldSelector", "fix": "use labelSelector for labels"}],
        )
    if request.GET.get("watch", "").lower() in {"1", "true"}:
        since = int_param(request, "resourceVersion", 0, 0, 2**62)
        timeout = int_param(request, "timeoutSeconds", 30, 0, settings.FLOTILLA_WATCH_MAX_SECONDS)
        return watch.wait(info.kind, since, timeout, selector, node_name)
    filters = {"node_name": node_name} if node_name is not None else {}
    # No transaction (under SQLite one would take the write lock). The version is
    # read first: a watch from it may replay a change the items already show, which
    # clients treat as a no-op, but can never miss one.
    version = watch.current_version()
    items = [store.to_document(r) for r in store.list_kind(info.kind, selector, **filters)]
    return {
        "apiVersion": "flotilla.dev/v1",
        "kind": f"{info.kind}List",
        "metadata": {"resourceVersion": str(version)},
        "items": items,
    }


@endpoint({"GET": "viewer", "PUT": "operator", "DELETE": "operator"}, node_scoped_reads=True)
def object_view(request: HttpRequest, plural: str, name: str) -> Any:
    info = kind_info(plural)
    if request.method == "GET":
        resource = store.find(info.kind, name)
        scopes.check_read(request.principal, info.kind, resource, name)
        if resource is None:
            store.get(info.kind, name)  # the 404 with its message
        return store.to_document(resource)
    if request.method == "PUT":
        outcome = applier.replace(json_body(request), info.kind, name, request.principal.name)
        document = store.to_document(store.get(info.kind, name))
        return {**document, "action": outcome.action}
    deleted = delete(info, name, request.principal.name)
    if deleted.gone:
        body = {"status": "deleted", "kind": deleted.kind, "name": deleted.name}
    else:
        body = {"status": "deleting", "object": deleted.document}
    return JsonResponse(body, status=deleted.status_code)


@dataclass(frozen=True)
class Deleted:
    """What a delete did: the object is gone, or it is deleting (finalizers still
    run, ``document`` shows it with its deletionTimestamp)."""

    kind: str
    name: str
    document: dict[str, Any] | None = None

    @property
    def gone(self) -> bool:
        return self.document is None

    @property
    def status_code(self) -> int:
        """The HTTP status the API answers with: 200 gone, 202 accepted and still deleting."""
        return 200 if self.gone else 202


def delete(info: KindInfo, name: str, actor: str) -> Deleted:
    """Delete (or start deleting) one object, audited; a Policy still named is a Conflict."""
    with transaction.atomic():
        resource = store.get(info.kind, name, for_update=True)
        if info.kind == "Policy" and (named_by := policies.users_of(name)):
            raise Conflict(
                f"policy/{name} is used by {', '.join(named_by[:5])}",
                [{"field": "metadata.name", "fix": "point those objects at another policy first"}],
            )
        gone = store.request_delete(resource)
        events.audit(actor, "delete", info.kind, name)
        return Deleted(info.kind, name, None if gone else store.to_document(resource))


@endpoint({"PUT": "agent"})
def status_view(request: HttpRequest, plural: str, name: str) -> dict[str, Any]:
    """Status is written here only, by controllers (admin) and agents (their own objects)."""
    info = kind_info(plural)
    body = json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("status"), dict):
        raise Invalid('send {"status": {...}}', [{"field": "status", "fix": "wrap the status in an object"}])
    with transaction.atomic():
        resource = store.get(info.kind, name, for_update=True)
        principal = request.principal
        if principal.role == "agent" and not (
            scopes.is_node_token(principal) and scopes.owns(principal, info.kind, resource)
        ):
            raise scopes.deny(principal, f"write the status of {info.kind.lower()}/{name}")
        status = body["status"]
        if principal.role == "agent":
            status = keep_controller_keys(info.kind, resource.status, status)
        store.update_status(resource, status)
        return store.to_document(resource)


# Status keys that only controllers write, per kind, as dotted paths. A node token may write
# the status of its own Node and Workloads, but not drop or change these: the power limits a
# controller asked for (controlplane/power.py), a router's backends (controllers/routers.py).
CONTROLLER_STATUS_KEYS: dict[str, tuple[str, ...]] = {
    "Node": tuple(f"power.{key}" for key in power.CONTROLLER_KEYS),
    "Workload": routers.CONTROLLER_KEYS,
}


def keep_controller_keys(kind: str, stored: Mapping[str, Any], written: dict[str, Any]) -> dict[str, Any]:
    """``written`` (a status an agent PUTs) with the controllers' keys of ``kind`` as stored:
    one it sent is dropped, one it left out is put back."""
    kept = copy.deepcopy(written)
    for path in CONTROLLER_STATUS_KEYS.get(kind, ()):
        *sections, key = path.split(".")
        into = _section(kept, sections)
        if into is not None:
            into.pop(key, None)
        source = _section(stored, sections)
        if source is None or key not in source:
            continue
        place = kept
        for section in sections:
            if not isinstance(place.get(section), dict):
                place[section] = {}
            place = place[section]
        place[key] = copy.deepcopy(source[key])
    return kept


def _section(document: Any, sections: list[str]) -> Any:
    """The mapping at ``sections`` under ``document``, or None where there is none."""
    for section in sections:
        document = document.get(section) if isinstance(document, Mapping) else None
    return document if isinstance(document, Mapping) else None


@endpoint({"GET": "viewer"})
def object_events_view(request: HttpRequest, plural: str, name: str) -> dict[str, Any]:
    info = kind_info(plural)
    limit = int_param(request, "limit", 100, 1, 1000)
    rows = Event.objects.filter(kind=info.kind, name=name).order_by("-last_seen")[:limit]
    return {"items": [events.to_dict(e) for e in rows]}


@endpoint({"GET": "viewer"})
def events_view(request: HttpRequest) -> dict[str, Any]:
    limit = int_param(request, "limit", 100, 1, 1000)
    rows = Event.objects.order_by("-last_seen")
    if kind := request.GET.get("kind"):
        info = kind_for(kind) or kind_info(kind)
        rows = rows.filter(kind=info.kind)
    if name := request.GET.get("name"):
        rows = rows.filter(name=name)
    if type_ := request.GET.get("type"):
        rows = rows.filter(type=type_)
    return {"items": [events.to_dict(e) for e in rows[:limit]]}


@endpoint({"GET": "admin"})
def audit_view(request: HttpRequest) -> dict[str, Any]:
    limit = int_param(request, "limit", 100, 1, 1000)
    rows = AuditEntry.objects.order_by("-at")
    for param, column in (("actor", "actor"), ("kind", "kind"), ("name", "name")):
        if value := request.GET.get(param):
            rows = rows.filter(**{column: value})
    return {"items": [events.audit_to_dict(e) for e in rows[:limit]]}


@endpoint({"GET": "viewer"})
def plugins_view(request: HttpRequest) -> dict[str, Any]:
    return {"items": manager.describe()}


# --- tokens -----------------------------------------------------------------------


@endpoint({"GET": "admin", "POST": "admin"})
def tokens_view(request: HttpRequest) -> Any:
    if request.method == "GET":
        rows = ApiToken.objects.filter(revoked=False).order_by("created_at")
        return {
            "items": [
                {
                    "name": t.name,
                    "prefix": t.prefix,
                    "role": t.role,
                    "created": rfc3339(t.created_at),
                    "lastUsed": rfc3339(t.last_used_at),
                }
                for t in rows
            ]
        }
    body = json_body(request)
    if not isinstance(body, dict):
        raise Invalid('send {"name": ..., "role": ...}')
    role = body.get("role", "viewer")
    name = str(body.get("name") or f"{role}-token")[:128]
    if role not in ApiToken.ROLES:
        raise Invalid(
            f"role {role!r} is not known",
            [{"field": "role", "fix": "use one of: " + ", ".join(ApiToken.ROLES)}],
        )
    token, row = auth.create_token(name, role)
    events.audit(request.principal.name, "create", "Token", name, f"role={role} prefix={row.prefix}")
    return JsonResponse({"name": name, "role": role, "prefix": row.prefix, "token": token}, status=201)


@endpoint({"DELETE": "admin"})
def token_view(request: HttpRequest, prefix: str) -> dict[str, Any]:
    updated = auth.revoke(prefix)
    if not updated:
        raise NotFound(f"no active token with prefix {prefix}")
    events.audit(request.principal.name, "revoke", "Token", prefix)
    return {"status": "revoked", "prefix": prefix}


# --- users (dashboard log-ins) ---------------------------------------------------------


@endpoint({"GET": "admin", "POST": "admin"})
def users_view(request: HttpRequest) -> Any:
    if request.method == "GET":
        rows = User.objects.order_by("username").prefetch_related("groups")
        return {
            "items": [
                {
                    "name": u.username,
                    "role": users.role_of(u),
                    "active": u.is_active,
                    "lastLogin": rfc3339(u.last_login),
                }
                for u in rows
            ]
        }
    body = json_body(request)
    if not isinstance(body, dict):
        raise Invalid('send {"name": ..., "role": ...}')
    name, role = body.get("name"), body.get("role", "viewer")
    users.check(name, role)
    exists = User.objects.filter(username=name).exists()
    if exists and not body.get("reset"):
        raise Conflict(
            f"user {name} exists",
            [
                {
                    "field": "reset",
                    "fix": "send reset: true (flotilla user create --reset) to set a new password",
                }
            ],
        )
    _, password, created = users.create_or_reset(name, role)
    events.audit(request.principal.name, "create" if created else "reset", "User", name, f"role={role}")
    return JsonResponse({"name": name, "role": role, "password": password}, status=201 if created else 200)


def openapi_view(request: HttpRequest) -> JsonResponse:
    return JsonResponse(openapi.document())


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers. It touches neither the database nor the broker: a
    database outage must not get every web pod restarted (that is /readyz's job)."""
    return JsonResponse({"status": "ok"})


# Seconds /readyz waits for the broker. Kubernetes' default probe timeout is 1 s, so a
# readiness probe on /readyz should allow a few (the chart's timeoutSeconds).
READY_BROKER_TIMEOUT = 2.0
_URL_CREDENTIALS = re.compile(r"(//[^/@\s:]*):[^/@\s]*@")


def _check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def _check_broker() -> None:
    """Connect once to the Celery broker, or check the embedded broker's folders.

    A fresh connection with a short timeout and no retries: a probe must answer
    quickly, and a pooled connection could hide a broker that went away.
    """
    from controlplane.celeryapp import app

    if (app.conf.broker_url or "").startswith("filesystem://"):
        options = app.conf.broker_transport_options
        for key in ("data_folder_in", "data_folder_out", "processed_folder", "control_folder"):
            folder = options.get(key)
            if folder and not (os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK)):
                raise OSError(f"broker folder {key} is missing or not writable")
        return
    timeouts = {"socket_connect_timeout": READY_BROKER_TIMEOUT, "socket_timeout": READY_BROKER_TIMEOUT}
    with app.connection_for_write(connect_timeout=READY_BROKER_TIMEOUT, transport_options=timeouts) as conn:
        conn.ensure_connection(max_retries=0, timeout=READY_BROKER_TIMEOUT)


READY_CHECKS: dict[str, Callable[[], None]] = {"database": _check_database, "broker": _check_broker}


def readyz(request: HttpRequest) -> JsonResponse:
    """Ready when the database and the broker answer; 503 naming the check that failed.

    The body names only the failing check and the exception's class: probe answers
    are unauthenticated, so no URL, host or credential goes into them. The log line
    has the error's message, with any ``user:password@`` in a URL masked.
    """
    checks: dict[str, str] = {}
    for name, check in READY_CHECKS.items():
        try:
            check()
        except Exception as exc:  # any failure at all means "not ready"
            checks[name] = f"error: {type(exc).__name__}"
            log.warning("readyz: %s check failed: %s", name, _URL_CREDENTIALS.sub(r"\1:***@", str(exc)))
        else:
            checks[name] = "ok"
    failed = [name for name, result in checks.items() if result != "ok"]
    if failed:
        return JsonResponse({"status": "unavailable", "failed": failed, "checks": checks}, status=503)
    return JsonResponse({"status": "ok", "checks": checks})


def not_found(request: HttpRequest, path: str = "") -> JsonResponse:
    return JsonResponse(
        {
            "error": {
                "code": "NotFound",
                "message": f"no API endpoint {request.path}; see /api/v1/openapi.json",
            }
        },
        status=404,
    )
