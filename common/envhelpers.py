"""Typed helpers that read settings from the environment (healthchecks style).

Each helper names the variable in its error so that a typo in a deployment's
environment fails at start-up with a message that says what to fix.
"""

from __future__ import annotations

import os
from pathlib import Path


class ConfigError(ValueError):
    """A setting in the environment has a value Flotilla cannot use."""


def envstr(name: str, default: str | None = None) -> str | None:
    """Return the variable, or the contents of the file named by ``NAME_FILE``."""
    file_path = os.environ.get(f"{name}_FILE")
    if file_path:
        try:
            return Path(file_path).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE={file_path!r} cannot be read: {exc.strerror}") from exc
    value = os.environ.get(name)
    return default if value is None or value == "" else value


def envbool(name: str, default: bool = False) -> bool:
    value = envstr(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name}={value!r} is not a boolean; use true or false")


def _envnumber(name: str, default, minimum, cast: type, what: str):
    value = envstr(name)
    if value is None:
        return default
    try:
        number = cast(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not {what}") from None
    if minimum is not None and number < minimum:
        raise ConfigError(f"{name}={number} is below the minimum of {minimum}")
    return number


def envint(name: str, default: int, minimum: int | None = None) -> int:
    return _envnumber(name, default, minimum, int, "an integer")


def envfloat(name: str, default: float, minimum: float | None = None) -> float:
    return _envnumber(name, default, minimum, float, "a number")


def envlist(name: str, default: list[str] | None = None) -> list[str]:
    value = envstr(name)
    if value is None:
        return list(default or [])
    return [item.strip() for item in value.split(",") if item.strip()]


def flotilla_home() -> Path:
    """Where embedded mode keeps its database, broker queue, secret key and config."""
    return Path(envstr("FLOTILLA_HOME") or Path.home() / ".flotilla").expanduser()
