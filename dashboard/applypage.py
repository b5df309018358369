"""Apply YAML from the browser: paste or upload, Plan (a dry run), then Apply the same text.

Both steps run ``controlplane.apply.apply`` on documents parsed by
``controlplane.yamldocs.parse``, exactly what ``POST /api/v1/apply`` runs, so the
plan, the validation problems and the audit log match the CLI's. The planned text
travels back in a hidden field, so "Apply" writes what the operator reviewed and not
whatever the text box holds by then.
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import path
from django.views.decorators.http import require_http_methods

from controlplane import apply as applier
from controlplane import yamldocs
from controlplane.apply import Outcome
from controlplane.errors import ApiError, Invalid, TooLarge
from dashboard.common import actor
from dashboard.roles import needs

ACTION_BADGE = {"created": "info", "configured": "warn", "unchanged": ""}
MAX_SHOWN_CHANGES = 60  # a created object lists every field; past this many the page says "and N more"
MAX_VALUE_CHARS = 200


# --- helpers shared with the Deployment edit page -------------------------------------------


def _value_text(value: Any) -> str:
    """A diff value as one short line of JSON (what the API returns), cut when long."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 1] + "…"


def _change_row(change: dict[str, Any]) -> dict[str, Any]:
    op = change.get("op")
    return {
        "path": change.get("path", ""),
        "op": op,
        "old": _value_text(change.get("old")) if op in ("remove", "replace") else None,
        "new": _value_text(change.get("new")) if op in ("add", "replace") else None,
    }


def plan_rows(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    """Outcomes as the plan table shows them: action badge and a capped list of field changes."""
    rows = []
    for index, outcome in enumerate(outcomes):
        data = outcome.as_dict()
        changes = data["diff"]
        rows.append(
            {
                **data,
                "index": index,
                "object": f"{data['kind'].lower()}/{data['name']}",
                "badge": ACTION_BADGE.get(data["action"], ""),
                "changes": [_change_row(c) for c in changes[:MAX_SHOWN_CHANGES]],
                "more": max(0, len(changes) - MAX_SHOWN_CHANGES),
            }
        )
    return rows


def problem_view(exc: ApiError) -> dict[str, Any]:
    """An API error as the page shows it: its message and each problem's document, field and fix."""
    details = [
        {
            "document": d.get("document"),
            "field": d.get("field") or "",
            "message": d.get("message") or (exc.message if len(exc.details) == 1 else ""),
            "fix": d.get("fix") or "",
        }
        for d in exc.details
    ]
    return {"code": exc.code, "status": exc.status, "message": exc.message, "details": details}


def summary(outcomes: list[Outcome]) -> str:
    counts = {action: 0 for action in ACTION_BADGE}
    for outcome in outcomes:
        counts[outcome.action] = counts.get(outcome.action, 0) + 1
    return ", ".join(f"{n} {action}" for action, n in counts.items() if n) or "nothing"


def parse_text(text: str | bytes) -> list[Any]:
    """Documents from pasted or uploaded text, with the API's size, document and depth limits."""
    body = text.encode("utf-8") if isinstance(text, str) else text
    return yamldocs.parse(body, settings.FLOTILLA_MAX_BODY_BYTES, settings.FLOTILLA_MAX_DOCUMENTS)


# --- the page ---------------------------------------------------------------------------


def _read_upload(upload: UploadedFile) -> bytes:
    """An uploaded file's bytes; refused before reading when it is over the body limit."""
    limit = settings.FLOTILLA_MAX_BODY_BYTES
    if upload.size is not None and upload.size > limit:
        raise TooLarge(
            f"the file {upload.name} is {upload.size} bytes; the limit is {limit}",
            [{"field": "file", "fix": "split it into smaller files or raise FLOTILLA_MAX_BODY_BYTES"}],
        )
    return upload.read(limit + 1)


def _submitted(request: HttpRequest) -> tuple[str, bytes]:
    """(text to show again, bytes to parse): an uploaded file wins over the text box."""
    upload = request.FILES.get("file")
    if upload is None:
        text = request.POST.get("yaml", "")
        return text, text.encode("utf-8")
    body = _read_upload(upload)
    try:
        return body.decode("utf-8"), body
    except UnicodeDecodeError:
        raise Invalid(
            f"the file {upload.name} is not UTF-8 text",
            [{"field": "file", "fix": "upload a YAML or JSON file saved as UTF-8"}],
        ) from None


def _run(request: HttpRequest, action: str) -> dict[str, Any]:
    """Plan or apply what was submitted; any problem comes back as ``error`` and nothing is written."""
    text = request.POST.get("yaml", "")
    try:
        text, body = _submitted(request)
        documents = parse_text(body)
        outcomes = applier.apply(documents, actor=actor(request), dry_run=action != "apply")
    except ApiError as exc:
        return {"text": text, "error": problem_view(exc), "status": exc.status}
    key = "results" if action == "apply" else "plan"
    return {"text": text, key: plan_rows(outcomes), "summary": summary(outcomes), "status": 200}


@needs("operator")
@require_http_methods(["GET", "POST"])
def apply_page(request: HttpRequest) -> HttpResponse:
    limit = settings.FLOTILLA_MAX_BODY_BYTES
    context: dict[str, Any] = {"limit": limit, "max_documents": settings.FLOTILLA_MAX_DOCUMENTS, "text": ""}
    status = 200
    if request.method == "POST":
        action = "apply" if request.POST.get("action") == "apply" else "plan"
        context.update(_run(request, action), action=action)
        status = context.pop("status")
    return render(request, "dashboard/apply.html", context, status=status)


urlpatterns = [path("apply/", apply_page, name="apply")]
