"""A tiny error hierarchy (kopf style) shared by the API and the reconcilers.

``ApiError`` and its subclasses become JSON error bodies. A reconcile raises
``TemporaryError`` to be retried after a delay; any other exception is not retried
(there is no ``PermanentError``: retrying a broken spec cannot help, and the next
write or the periodic resync runs the reconcile again anyway).
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error the API turns into a JSON body with the given HTTP status."""

    status = 400
    code = "BadRequest"

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or []

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            error["details"] = self.details
        return {"error": error}


class Invalid(ApiError):
    status = 422
    code = "Invalid"


class NotFound(ApiError):
    status = 404
    code = "NotFound"


class Conflict(ApiError):
    status = 409
    code = "Conflict"


class Gone(ApiError):
    status = 410
    code = "Gone"


class TooLarge(ApiError):
    status = 413
    code = "TooLarge"


class Unauthorized(ApiError):
    status = 401
    code = "Unauthorized"


class Forbidden(ApiError):
    status = 403
    code = "Forbidden"


class TemporaryError(Exception):
    """The reconcile should be retried after ``delay`` seconds."""

    def __init__(self, message: str, delay: float = 5.0):
        super().__init__(message)
        self.delay = delay
