"""Dashboard users and their roles (the API's token roles: viewer, operator, admin).

A user's role is the Django group it belongs to; a superuser is an admin. Users
are made by ``flotilla up`` (the first admin, password printed once), by
``flotilla user create`` (through ``POST /api/v1/users``) and by admins on the
dashboard's Users page.
"""

from __future__ import annotations

import secrets
from typing import Any

from django.contrib.auth.models import Group, User
from django.db import transaction

from common.specs import name_problem
from controlplane.errors import Invalid

ROLES = ("viewer", "operator", "admin")


def role_of(user: Any) -> str | None:
    """The user's role, read once per user object (a request asks in its view decorator and
    again in the template context)."""
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return None
    if user.is_superuser:
        return "admin"
    if not hasattr(user, "_flotilla_role"):
        names = {g.name for g in user.groups.all()}
        user._flotilla_role = next((role for role in reversed(ROLES) if role in names), None)
    return user._flotilla_role


def check(name: Any, role: Any) -> None:
    """Refuse a bad user name or role, naming the field and the fix (API and Users page)."""
    if problem := name_problem(name):
        raise Invalid(
            f"user name {problem}", [{"field": "name", "fix": "use lower-case letters, digits and '-'"}]
        )
    if role not in ROLES:
        raise Invalid(
            f"role must be one of {', '.join(ROLES)}, not {role!r}",
            [{"field": "role", "fix": "use one of: " + ", ".join(ROLES)}],
        )


def set_role(user: User, role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    user.groups.remove(*Group.objects.filter(name__in=ROLES))
    user.groups.add(Group.objects.get_or_create(name=role)[0])
    user.__dict__.pop("_flotilla_role", None)


def new_password() -> str:
    return secrets.token_urlsafe(15)


def create_or_reset(username: str, role: str, password: str | None = None) -> tuple[User, str, bool]:
    """Create the user, or give an existing one this role and a new password.
    Returns the user, its password (to show once) and whether it was created."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    password = password or new_password()
    with transaction.atomic():
        user, created = User.objects.get_or_create(username=username)
        user.set_password(password)
        user.is_active = True
        user.save()
        set_role(user, role)
    return user, password, created
