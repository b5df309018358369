"""Conditions as idempotent helpers (kopf / Kubernetes API conventions).

``lastTransitionTime`` moves only when a condition's status flips, so a
reconciler may set the same condition on every pass without churning it.
"""

from __future__ import annotations

from typing import Any

from common.timeutil import now, rfc3339


def get_condition(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for condition in status.get("conditions", []):
        if condition.get("type") == type_:
            return condition
    return None


def is_true(status: dict[str, Any], type_: str) -> bool:
    condition = get_condition(status, type_)
    return bool(condition and condition.get("status") == "True")


def set_condition(status: dict[str, Any], type_: str, value: bool, reason: str, message: str = "") -> bool:
    """Set a condition in place; return True when anything about it changed."""
    text = "True" if value else "False"
    conditions = status.setdefault("conditions", [])
    current = get_condition(status, type_)
    if current is None:
        conditions.append(
            {
                "type": type_,
                "status": text,
                "reason": reason,
                "message": message,
                "lastTransitionTime": rfc3339(now()),
            }
        )
        return True
    changed = (current.get("status"), current.get("reason"), current.get("message")) != (
        text,
        reason,
        message,
    )
    if current.get("status") != text:
        current["lastTransitionTime"] = rfc3339(now())
    current.update(status=text, reason=reason, message=message)
    return changed
