"""Log in and out, and (for admins) users and their roles.

Users are Django users; their role is a group (see ``dashboard.roles``). The
first admin is created by ``flotilla up`` (password printed once) or by
``flotilla user create``.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import path
from django.views.decorators.http import require_http_methods

from controlplane import events
from controlplane.errors import Invalid
from controlplane.users import ROLES, check, create_or_reset, role_of
from dashboard.common import actor
from dashboard.roles import needs


@needs("admin")
@require_http_methods(["GET", "POST"])
def users(request: HttpRequest) -> HttpResponse:
    shown_password = None
    if request.method == "POST":
        username = (request.POST.get("username") or "").strip().lower()
        role = request.POST.get("role") or "viewer"
        try:
            check(username, role)
        except Invalid as exc:
            messages.error(request, f"{exc.message}: {exc.details[0]['fix']}")
        else:
            shown_password = _act(request, username, role)
            if shown_password is None:
                return redirect("users")
    rows = [
        {"user": u, "role": role_of(u) or "none"}
        for u in User.objects.order_by("username").prefetch_related("groups")
    ]
    return render(
        request, "dashboard/users.html", {"rows": rows, "roles": ROLES, "shown_password": shown_password}
    )


def _act(request: HttpRequest, username: str, role: str) -> str | None:
    """Deactivate the user (None), or create/reset it and return its new password."""
    if request.POST.get("action") == "deactivate":
        User.objects.filter(username=username).exclude(pk=request.user.pk).update(is_active=False)
        events.audit(actor(request), "deactivate", "User", username)
        messages.success(request, f"user {username} can no longer log in")
        return None
    _, password, _ = create_or_reset(username, role)
    events.audit(actor(request), "set", "User", username, f"role={role}")
    messages.success(request, f"user {username} has role {role} and the password below (shown once)")
    return password


class LoginView(auth_views.LoginView):
    template_name = "dashboard/login.html"
    redirect_authenticated_user = True


urlpatterns = [
    path("login/", LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("users/", users, name="users"),
]
