"""Events (what controllers and agents said about objects) and the audit log (who changed what).

Both are long tables that only grow, so every filter maps to a plain column
comparison and the page shows 50 rows: a page costs a count and one query
however large the tables get. Filters come from the query string, which anyone
can edit, so they go through a Django form: a bad value is named in a message
and left out of the query instead of raising a 500. The audit log needs the
admin role, as ``GET /api/v1/audit`` does: its summaries name token prefixes
and user roles.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django import forms
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import path

from common.specs import KINDS, NAME_MAX, kind_for
from common.timeutil import now
from controlplane.models import AuditEntry, Event
from dashboard.common import page_of, querystring
from dashboard.roles import needs

# "since" choices: the value in the query string -> how far back it reaches.
WINDOWS: dict[str, timedelta] = {
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "1d": timedelta(days=1),
}
WINDOW_CHOICES = [("", "all time"), ("15m", "last 15 min"), ("1h", "last hour"), ("1d", "last day")]
DATETIME_FORMATS = ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S"]
# Audit verbs written today (apply outcomes, deletes, tokens, users, cordon/drain); a hint, not a limit.
KNOWN_VERBS = (
    "created",
    "configured",
    "replace",
    "delete",
    "create",
    "revoke",
    "reset",
    "set",
    "deactivate",
    "cordon",
    "uncordon",
    "drain",
    "evict",
)


class TimeFilter(forms.Form):
    """A preset window (``since``) or an explicit start (``after``, a datetime-local in UTC)."""

    since = forms.ChoiceField(choices=WINDOW_CHOICES, required=False)
    after = forms.DateTimeField(required=False, input_formats=DATETIME_FORMATS, label="After (UTC)")

    def start(self) -> datetime | None:
        """The earliest moment shown; an explicit ``after`` wins over a preset window."""
        after = self.cleaned_data.get("after")
        if after is not None:
            return after
        window = WINDOWS.get(self.cleaned_data.get("since") or "")
        return now() - window if window else None


class EventFilter(TimeFilter):
    kind = forms.CharField(required=False, max_length=32)
    name = forms.CharField(required=False, max_length=NAME_MAX)
    type = forms.ChoiceField(
        choices=[("", "any"), ("Normal", "Normal"), ("Warning", "Warning")], required=False
    )
    reason = forms.CharField(required=False, max_length=64)

    def clean_kind(self) -> str:
        """Accept what the CLI accepts (``tj``, ``deployments``) and store the kind's real name."""
        word = self.cleaned_data.get("kind") or ""
        if not word:
            return ""
        info = kind_for(word)
        if info is None:
            raise forms.ValidationError(f"{word!r} is not a kind; use one of {', '.join(KINDS)}.")
        return info.kind


class AuditFilter(TimeFilter):
    actor = forms.CharField(required=False, max_length=128)
    verb = forms.CharField(required=False, max_length=16)
    kind = forms.CharField(required=False, max_length=32)
    name = forms.CharField(required=False, max_length=NAME_MAX)

    def clean_kind(self) -> str:
        """Resource kinds by any alias; other audited kinds (Token, User) as written."""
        word = self.cleaned_data.get("kind") or ""
        info = kind_for(word) if word else None
        return info.kind if info else word


def _read(form: TimeFilter) -> list[str]:
    """Validate the filters; one message per refused value. Values that passed stay in
    ``form.cleaned_data``, so the rest of the filters still apply."""
    form.is_valid()
    return [
        f"{form.fields[field].label or field.capitalize()}: {' '.join(messages)} The filter is ignored."
        for field, messages in form.errors.items()
    ]


def _events(form: EventFilter) -> QuerySet[Event]:
    values = form.cleaned_data
    rows = Event.objects.order_by("-last_seen", "-id")
    for field in ("kind", "name", "type", "reason"):
        if values.get(field):
            rows = rows.filter(**{field: values[field]})
    if (start := form.start()) is not None:
        rows = rows.filter(last_seen__gte=start)
    return rows


def _audit(form: AuditFilter) -> QuerySet[AuditEntry]:
    values = form.cleaned_data
    rows = AuditEntry.objects.order_by("-at", "-id")
    if values.get("actor"):
        # Contains: dashboard users are "user/NAME" and tokens go by their own names.
        rows = rows.filter(actor__icontains=values["actor"])
    if values.get("kind"):
        rows = rows.filter(kind__iexact=values["kind"])  # "token" finds Token entries too
    for field in ("verb", "name"):
        if values.get(field):
            rows = rows.filter(**{field: values[field]})
    if (start := form.start()) is not None:
        rows = rows.filter(at__gte=start)
    return rows


def _render(
    request: HttpRequest, template: str, form: TimeFilter, rows: QuerySet, errors: list[str]
) -> HttpResponse:
    """The page; 400 when a filter was refused, so scripts notice, with the message on the page."""
    context = {
        "form": form,
        "page": page_of(request, rows),
        "pager_query": querystring(request, page=None),
        "filter_errors": errors,
        "filtered": any(v for k, v in request.GET.items() if k != "page"),
        "kinds": list(KINDS),
        "windows": WINDOW_CHOICES,
        "verbs": KNOWN_VERBS,
    }
    return render(request, template, context, status=400 if errors else 200)


@needs("viewer")
def events_page(request: HttpRequest) -> HttpResponse:
    form = EventFilter(request.GET)
    errors = _read(form)
    return _render(request, "dashboard/events.html", form, _events(form), errors)


@needs("admin")
def audit_page(request: HttpRequest) -> HttpResponse:
    form = AuditFilter(request.GET)
    errors = _read(form)
    return _render(request, "dashboard/audit.html", form, _audit(form), errors)


urlpatterns = [
    path("events/", events_page, name="events"),
    path("audit/", audit_page, name="audit"),
]
