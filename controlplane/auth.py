"""API tokens: stored as a public prefix plus an HMAC, compared in constant time.

A token looks like ``flt_<prefix>_<secret>``. The prefix finds the row; the
HMAC (keyed by SECRET_KEY) of the whole token is compared with
``hmac.compare_digest``. The plaintext is shown once, at creation, and never
stored or logged.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from django.conf import settings

from controlplane.errors import Forbidden, Unauthorized
from controlplane.models import ApiToken
from controlplane.timeutil import now

ROLE_RANK = {"viewer": 1, "agent": 1, "operator": 2, "admin": 3}


def _digest(token: str) -> str:
    return hmac.new(settings.SECRET_KEY.encode(), token.encode(), hashlib.sha256).hexdigest()


def create_token(name: str, role: str, node_name: str = "") -> tuple[str, ApiToken]:
    if role not in ApiToken.ROLES:
        raise ValueError(f"role must be one of {', '.join(ApiToken.ROLES)}")
    prefix = secrets.token_hex(6)
    token = f"flt_{prefix}_{secrets.token_urlsafe(32)}"
    row = ApiToken.objects.create(
        name=name, prefix=prefix, digest=_digest(token), role=role, node_name=node_name
    )
    return token, row


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    node_name: str = ""

    def can(self, needed: str) -> bool:
        if self.role == "agent":
            # Agent tokens read only through node-scoped views (see controlplane.scopes).
            return needed == "agent"
        if needed == "agent":
            return self.role == "admin"
        return ROLE_RANK[self.role] >= ROLE_RANK[needed]


def authenticate(header: str | None) -> Principal:
    if not header or not header.startswith("Bearer "):
        raise Unauthorized(
            "this API needs a token",
            [{"field": "Authorization", "fix": "send 'Authorization: Bearer <token>'"}],
        )
    token = header.removeprefix("Bearer ").strip()
    parts = token.split("_")
    row = None
    if len(parts) >= 3 and parts[0] == "flt" and len(parts[1]) == 12:
        row = ApiToken.objects.filter(prefix=parts[1], revoked=False).first()
    # Compare even when no row matched, so timing does not reveal valid prefixes.
    expected = row.digest if row else _digest("flt_invalid")
    if not hmac.compare_digest(expected, _digest(token)) or row is None:
        raise Unauthorized("the token is not valid or was revoked")
    if row.last_used_at is None or (now() - row.last_used_at).total_seconds() > 60:
        ApiToken.objects.filter(pk=row.pk).update(last_used_at=now())
    return Principal(name=row.name, role=row.role, node_name=row.node_name)


def require(principal: Principal, needed: str) -> None:
    if not principal.can(needed):
        raise Forbidden(
            f"token {principal.name!r} has role {principal.role}; this needs {needed}",
            [{"field": "Authorization", "fix": f"use a token with role {needed} or higher"}],
        )
