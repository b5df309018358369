"""Helpers shared by the dashboard's pages: pagination, actors, query strings, numbers.

The owner pages' condition badges and Workload rows are ``dashboard.owners``.
"""

from __future__ import annotations

import math
from typing import Any

from django.core.paginator import Page, Paginator
from django.http import HttpRequest

PER_PAGE = 50


def page_of(request: HttpRequest, items: Any, per_page: int = PER_PAGE) -> Page:
    """The requested page (``?page=N``), clamped to the pages that exist."""
    return Paginator(items, per_page).get_page(request.GET.get("page"))


def actor(request: HttpRequest) -> str:
    """How the audit log names a dashboard user (API tokens appear by their own name)."""
    return f"user/{request.user.get_username()}"


def querystring(request: HttpRequest, **changes: Any) -> str:
    """The current query string with some parameters replaced (for pager and filter links)."""
    params = request.GET.copy()
    for key, value in changes.items():
        if value in (None, ""):
            params.pop(key, None)
        else:
            params[key] = value
    return params.urlencode()


def number(value: Any) -> float | None:
    """A finite number reported in telemetry or status, else None (never a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def pct(value: float | None, limit: float | None) -> float:
    """value as a percentage of limit, clamped to 0..100, for bar widths."""
    if value is None or not limit:
        return 0.0
    return round(max(0.0, min(100.0, 100.0 * value / limit)), 1)
