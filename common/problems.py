"""One exception for input that cannot be used as given: what is wrong, where, what to do.

Every layer that rejects input says the same three things (DESIGN: errors that name
the field and the fix), so they share one shape: ``message``, ``field`` (a dotted
path in whatever the caller wrote: a spec, a flag, a ``plan mix`` input) and
``fix``. ``details()`` is the API error's ``details`` list, so the control plane turns
any of them into a 422 body without knowing which module raised it.
"""

from __future__ import annotations

from typing import Any


class Problem(ValueError):
    """Input that cannot be used; ``field`` says where and ``fix`` what to change."""

    def __init__(
        self, message: str, field: str = "", fix: str = "", errors: list[dict[str, Any]] | None = None
    ):
        super().__init__(message)
        self.message = message
        self.field = field
        self.fix = fix
        # Several problems found at once (one per bad parameter), each a details entry.
        self.errors = list(errors or [])

    def detail(self) -> dict[str, Any]:
        """This problem as one entry of an API error's ``details``."""
        entry: dict[str, Any] = {"field": self.field, "message": self.message}
        if self.fix:
            entry["fix"] = self.fix
        return entry

    def details(self) -> list[dict[str, Any]]:
        """The API error's ``details``: the problems found, or this one alone."""
        return list(self.errors) if self.errors else [self.detail()]
