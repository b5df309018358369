"""API keys for a Deployment's serving endpoint, kept as SHA-256 digests.

An operator writes plain keys under ``spec.serving.apiKeys`` (or digests, as
``sha256:<hex>``); the spec model stores only digests, so neither the database, the
Workload config on a node, nor ``flotilla get -o yaml`` ever holds a usable key.
Applying the same document twice stores the same digests (SHA-256 is
deterministic), so apply stays idempotent. A plain SHA-256, not an HMAC with a
server secret: the router and the replicas check keys on the nodes, which do not
hold the control plane's secret; the keys themselves must carry the entropy (at
least 16 characters; ``openssl rand -hex 32`` makes a good one).
"""

from __future__ import annotations

import hashlib
import hmac
import re

PREFIX = "sha256:"
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
MIN_KEY_CHARS = 16
MAX_KEY_CHARS = 256
MAX_KEYS = 32


def digest(key: str) -> str:
    """``sha256:<hex>`` of a plain key."""
    return PREFIX + hashlib.sha256(key.encode()).hexdigest()


def normalize(entry: str) -> str:
    """A stored digest as it is, a plain key as its digest; ValueError for a key too short
    or too long to be one."""
    if entry.startswith(PREFIX):
        if not DIGEST.match(entry):
            raise ValueError("a digest must be 'sha256:' and 64 lowercase hex digits")
        return entry
    if not MIN_KEY_CHARS <= len(entry) <= MAX_KEY_CHARS:
        raise ValueError(
            f"an API key must be {MIN_KEY_CHARS} to {MAX_KEY_CHARS} characters "
            "(make one with `openssl rand -hex 32`)"
        )
    return digest(entry)


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def accepts(digests: list[str] | tuple[str, ...], presented: str | None) -> bool:
    """Whether ``presented`` is one of the keys. Every digest is compared, in constant
    time, so the time taken says nothing about which key (or how much of one) matched."""
    if presented is None or len(presented) > MAX_KEY_CHARS:
        return False
    candidate = digest(presented).encode()
    found = False
    for stored in digests:
        found |= hmac.compare_digest(candidate, stored.encode())
    return found
