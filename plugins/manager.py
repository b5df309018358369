"""The plugin manager and the registry of named implementations by kind.

Built-ins load first, then modules named in ``FLOTILLA_PLUGIN_MODULES``, then
installed packages' entry points in the group ``flotilla`` (turned off with
``FLOTILLA_LOAD_ENTRYPOINTS=false``, as the tests do). ``FLOTILLA_PLUGINS``
restricts which implementation names are selectable. The kinds, and the hook
that registers each, are ``plugins.types.PLUGIN_KIND_TABLE``'s.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

import pluggy
from pydantic import BaseModel, ValidationError

from common.envhelpers import ConfigError, envbool, envlist
from common.problems import Problem
from plugins import hookspecs
from plugins.types import PLUGIN_KIND_TABLE, Plugin

BUILTIN_MODULES = [
    "plugins.binpack",
    "plugins.spread",
    "plugins.melange",
    "plugins.distserve",
    "plugins.caches",
    "plugins.checkpointers",
    "plugins.powercaps",
]


class PluginError(Problem):
    """A plugin name or its parameters cannot be used; ``field`` says where."""


_lock = threading.Lock()
_manager: pluggy.PluginManager | None = None
_registry: dict[str, dict[str, Plugin]] | None = None


def make_manager(modules: list[str] | None = None, entrypoints: bool | None = None) -> pluggy.PluginManager:
    manager = pluggy.PluginManager("flotilla")
    manager.add_hookspecs(hookspecs)
    for dotted in BUILTIN_MODULES + (modules if modules is not None else []):
        try:
            module = importlib.import_module(dotted)
        except ImportError as exc:
            raise ConfigError(
                f"FLOTILLA_PLUGIN_MODULES names {dotted!r}, which cannot be imported: {exc}"
            ) from None
        manager.register(module, name=dotted)
    if entrypoints:
        manager.load_setuptools_entrypoints("flotilla")
    return manager


def get_manager() -> pluggy.PluginManager:
    global _manager
    with _lock:
        if _manager is None:
            _manager = make_manager(
                envlist("FLOTILLA_PLUGIN_MODULES"), envbool("FLOTILLA_LOAD_ENTRYPOINTS", True)
            )
        return _manager


def build_registry(manager: pluggy.PluginManager) -> dict[str, dict[str, Plugin]]:
    """Collect implementations by kind and name.

    Two modules registering the same kind and name is an error, not a silent
    override: which one runs must never depend on load order.
    """
    allowed = set(envlist("FLOTILLA_PLUGINS"))
    registry: dict[str, dict[str, Plugin]] = {kind: {} for kind in PLUGIN_KIND_TABLE}
    source: dict[tuple[str, str], str] = {}
    for kind, info in PLUGIN_KIND_TABLE.items():
        for hookimpl in getattr(manager.hook, info.hook).get_hookimpls():
            for impl in hookimpl.function() or []:
                if impl.kind != kind:
                    raise PluginError(f"plugin {impl.name!r} says kind {impl.kind!r} from {info.hook}")
                if allowed and impl.name not in allowed:
                    continue
                key = (kind, impl.name)
                if key in source:
                    raise PluginError(
                        f"{kind} plugin {impl.name!r} is registered by both {source[key]} and "
                        f"{hookimpl.plugin_name}",
                        fix="uninstall one, or leave one out with FLOTILLA_PLUGINS",
                    )
                source[key] = hookimpl.plugin_name
                registry[kind][impl.name] = impl
    return registry


def registry() -> dict[str, dict[str, Plugin]]:
    global _registry
    if _registry is None:
        manager = get_manager()
        built = build_registry(manager)
        with _lock:
            _registry = built
    return _registry


def reset() -> None:
    """Forget the loaded plugins (tests change the environment between cases)."""
    global _manager, _registry
    with _lock:
        _manager = None
        _registry = None


def get(kind: str, name: str) -> Plugin:
    available = registry().get(kind, {})
    if name not in available:
        known = ", ".join(sorted(available)) or "none"
        raise PluginError(
            f"no {kind} plugin named {name!r}",
            field="spec.plugin",
            fix=f"use one of: {known}",
        )
    return available[name]


def validate_params(impl: Plugin, params: dict[str, Any]) -> BaseModel:
    try:
        return impl.Params.model_validate(params or {})
    except ValidationError as exc:
        errors = [
            {
                "field": "spec.params." + ".".join(str(p) for p in err["loc"]),
                "message": err["msg"],
            }
            for err in exc.errors()
        ]
        raise PluginError(
            f"bad parameters for {impl.kind} plugin {impl.name!r}",
            field="spec.params",
            fix="see the plugin's schema with `flotilla plugins`",
            errors=errors,
        ) from None


def describe() -> list[dict[str, Any]]:
    """Every selectable plugin with its kind, description and parameter schema."""
    return [
        {
            "name": impl.name,
            "kind": kind,
            "description": impl.description,
            "paramsSchema": impl.Params.model_json_schema(),
        }
        for kind, impls in registry().items()
        for impl in impls.values()
    ]


def notify_event(event: dict[str, Any]) -> None:
    get_manager().hook.event_recorded(event=event)
