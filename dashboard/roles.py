"""Dashboard roles, the same three as the API's tokens: viewers see, operators act,
admins also manage users and tokens.

A user's role is the Django group it belongs to (see ``controlplane.users``).
Views declare the role they need with
``@needs("operator")``; a user below it gets 403, an anonymous one the login page.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from controlplane.auth import ROLE_RANK
from controlplane.users import ROLES, role_of

__all__ = ["ROLES", "allows", "context", "needs", "role_of"]


def allows(user: Any, needed: str) -> bool:
    role = role_of(user)
    return role is not None and ROLE_RANK[role] >= ROLE_RANK[needed]


def needs(role: str) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @login_required
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not allows(request.user, role):
                return render(
                    request,
                    "dashboard/forbidden.html",
                    {"needed": role, "have": role_of(request.user) or "none"},
                    status=403,
                )
            return view(request, *args, **kwargs)

        return wrapper

    return decorate


def context(request: HttpRequest) -> dict[str, Any]:
    """Template flags: ``can_operate`` hides action buttons from viewers (the views
    refuse them too; hiding is only courtesy)."""
    role = role_of(getattr(request, "user", None))
    return {
        "role": role,
        "can_operate": role is not None and ROLE_RANK[role] >= ROLE_RANK["operator"],
        "can_admin": role == "admin",
    }
