"""HTTP plumbing shared by every JSON view: the ``endpoint`` decorator and request readers.

The resource API, the agent protocol, logs and telemetry all answer the same way
(method check, token auth, role, JSON errors), so that lives here rather than in
any one of them. Token auth only (no cookies), so these views are CSRF-exempt by
design; the dashboard's cookie-authenticated forms keep CSRF protection.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from common.problems import Problem
from controlplane import auth, yamldocs
from controlplane.errors import ApiError, Invalid, TooLarge

log = logging.getLogger(__name__)


def _error(code: str, message: str, status: int) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message}}, status=status)


def endpoint(methods: dict[str, str], node_scoped_reads: bool = False) -> Callable:
    """Wrap a view: check the method, authenticate, require the role, render errors.

    ``node_scoped_reads`` lets a node's own token read through this view; the view
    then limits it to that node's objects with :func:`scopes.check_read`. A
    ``Problem`` that escapes the view is the caller's input, so it answers 422 with
    the problem's details, whichever module raised it.
    """

    def decorate(view: Callable[..., Any]) -> Callable[..., JsonResponse]:
        @csrf_exempt
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
            try:
                if request.method not in methods:
                    return _error("MethodNotAllowed", f"use {', '.join(methods)}", 405)
                principal = auth.authenticate(request.headers.get("Authorization"))
                needed = methods[request.method]
                if not (node_scoped_reads and needed == "viewer" and principal.node_name):
                    auth.require(principal, needed)
                request.principal = principal  # type: ignore[attr-defined]
                result = view(request, *args, **kwargs)
                if isinstance(result, JsonResponse):
                    return result
                return JsonResponse(result, safe=False, json_dumps_params={"separators": (",", ":")})
            except ApiError as exc:
                return JsonResponse(exc.body(), status=exc.status)
            except Problem as exc:
                error = Invalid(exc.message, exc.details())
                return JsonResponse(error.body(), status=error.status)
            except Exception:
                log.exception("unhandled error in %s %s", request.method, request.path)
                return _error("InternalError", "internal error; see the server log", 500)

        # The methods and roles this view answers, for tests and tooling (the OpenAPI check).
        wrapper.methods = dict(methods)  # type: ignore[attr-defined]
        return wrapper

    return decorate


def read_body(request: HttpRequest) -> bytes:
    limit = settings.FLOTILLA_MAX_BODY_BYTES
    declared = int(request.META.get("CONTENT_LENGTH") or 0)
    if declared > limit:
        raise TooLarge(
            f"body is {declared} bytes; the limit is {limit}",
            [{"field": "", "fix": "send less, or raise FLOTILLA_MAX_BODY_BYTES"}],
        )
    return request.read(limit + 1)


def json_body(request: HttpRequest) -> Any:
    """The body's one JSON (or YAML) document."""
    body = read_body(request)
    docs = yamldocs.parse(body, settings.FLOTILLA_MAX_BODY_BYTES, 1)
    return docs[0]


def int_param(request: HttpRequest, name: str, default: int, lo: int, hi: int) -> int:
    """Query parameter ``name`` as an integer clamped to [lo, hi]; ``default`` when absent."""
    raw = request.GET.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise Invalid(
            f"{name} must be an integer", [{"field": name, "fix": f"send {name}=<integer>"}]
        ) from None
    return max(lo, min(hi, value))
