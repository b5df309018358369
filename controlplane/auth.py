"""API tokens: stored as a public prefix plus an HMAC, compared in constant time.

A token looks like ``flt_<prefix>_<secret>``. The prefix finds the row; the
HMAC (keyed by SECRET_KEY) of the whole token is compared with
``hmac.compare_digest``. The plaintext is shown once, at creation, and never
stored or logged.

A verified token is remembered in the process for FLOTILLA_TOKEN_CACHE_SECONDS
(default 60), keyed by its HMAC, because a fleet's agents authenticate hundreds
of times a second and each look-up is a database round trip. Revoking a token
forgets it at once in the process that revoked it; other web processes stop
accepting it when their entry expires (as Kubernetes caches webhook token
reviews). Unknown or invalid tokens are never cached.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from django.conf import settings

from common.timeutil import now
from controlplane.errors import Forbidden, Unauthorized
from controlplane.models import ApiToken

log = logging.getLogger(__name__)
ROLE_RANK = {"viewer": 1, "agent": 1, "operator": 2, "admin": 3}
CACHE_ENTRIES = 20_000


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


TOKEN_RE = re.compile(r"^flt_([0-9a-f]{12})_([A-Za-z0-9_-]{20,128})$")


def ensure_token(name: str, role: str, token: str) -> bool:
    """Store a token whose value was made elsewhere (the Helm chart generates the agents'
    bootstrap token into a Secret); True when a row was written.

    Only its prefix and HMAC are kept, as for tokens made here. Idempotent: the same token
    again changes nothing. A different token under the same name replaces it, and the old
    one is revoked (the Secret was rotated). A token revoked through the API stays revoked:
    running this again (every upgrade does) must not bring it back; rotate the Secret.
    """
    match = TOKEN_RE.match(token)
    if match is None:
        raise ValueError(
            f"token {name!r} is not a Flotilla token (flt_<12 hex>_<20-128 of A-Z a-z 0-9 _ ->); "
            "generate one with `flotilla token create` or as the Helm chart does"
        )
    if role not in ApiToken.ROLES:
        raise ValueError(f"role must be one of {', '.join(ApiToken.ROLES)}")
    prefix, digest = match.group(1), _digest(token)
    current = ApiToken.objects.filter(prefix=prefix).first()
    if current is not None:
        if not hmac.compare_digest(current.digest, digest):
            raise ValueError(f"another token already uses the prefix {prefix}; generate a new token")
        if current.revoked:
            log.warning("token %s (prefix %s) was revoked; it stays revoked: rotate its Secret", name, prefix)
            return False
        if current.role != role or current.name != name:
            current.role, current.name = role, name
            current.save(update_fields=["role", "name"])
            verified.forget(prefix=prefix)
            return True
        return False
    for old in ApiToken.objects.filter(name=name, revoked=False):
        revoke(old.prefix)
    ApiToken.objects.create(name=name, prefix=prefix, digest=digest, role=role)
    return True


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


class _Verified:
    """Tokens verified recently in this process: HMAC digest -> (principal, prefix, expiry)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[Principal, str, float]] = OrderedDict()

    def get(self, digest: str) -> Principal | None:
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return None
            if entry[2] <= time.monotonic():
                del self._entries[digest]
                return None
            return entry[0]

    def put(self, digest: str, principal: Principal, prefix: str, seconds: float) -> None:
        with self._lock:
            self._entries[digest] = (principal, prefix, time.monotonic() + seconds)
            self._entries.move_to_end(digest)
            while len(self._entries) > CACHE_ENTRIES:
                self._entries.popitem(last=False)

    def forget(self, prefix: str | None = None, node_name: str | None = None) -> None:
        with self._lock:
            for digest, (principal, entry_prefix, _) in list(self._entries.items()):
                if entry_prefix == prefix or (node_name is not None and principal.node_name == node_name):
                    del self._entries[digest]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


verified = _Verified()


def authenticate(header: str | None) -> Principal:
    if not header or not header.startswith("Bearer "):
        raise Unauthorized(
            "this API needs a token",
            [{"field": "Authorization", "fix": "send 'Authorization: Bearer <token>'"}],
        )
    token = header.removeprefix("Bearer ").strip()
    digest = _digest(token)
    # The key is the HMAC, which a caller cannot choose without SECRET_KEY, so the
    # dictionary look-up reveals nothing about stored tokens.
    if (cached := verified.get(digest)) is not None:
        return cached
    parts = token.split("_")
    row = None
    if len(parts) >= 3 and parts[0] == "flt" and len(parts[1]) == 12:
        row = ApiToken.objects.filter(prefix=parts[1], revoked=False).first()
    # Compare even when no row matched, so timing does not reveal valid prefixes.
    expected = row.digest if row else _digest("flt_invalid")
    if not hmac.compare_digest(expected, digest) or row is None:
        raise Unauthorized("the token is not valid or was revoked")
    if row.last_used_at is None or (now() - row.last_used_at).total_seconds() > 60:
        ApiToken.objects.filter(pk=row.pk).update(last_used_at=now())
    principal = Principal(name=row.name, role=row.role, node_name=row.node_name)
    if settings.FLOTILLA_TOKEN_CACHE_SECONDS > 0:
        verified.put(digest, principal, row.prefix, settings.FLOTILLA_TOKEN_CACHE_SECONDS)
    return principal


def revoke(prefix: str) -> int:
    """Revoke the active token with this prefix; returns how many rows changed."""
    updated = ApiToken.objects.filter(prefix=prefix, revoked=False).update(revoked=True)
    verified.forget(prefix=prefix)
    return updated


def revoke_node_tokens(node_name: str) -> None:
    ApiToken.objects.filter(role="agent", node_name=node_name).update(revoked=True)
    verified.forget(node_name=node_name)


def require(principal: Principal, needed: str) -> None:
    if not principal.can(needed):
        raise Forbidden(
            f"token {principal.name!r} has role {principal.role}; this needs {needed}",
            [{"field": "Authorization", "fix": f"use a token with role {needed} or higher"}],
        )
