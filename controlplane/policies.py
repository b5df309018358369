"""Resolve a policy name to a plugin and validated parameters.

A name under ``policies:`` refers to a Policy of the right type; where no
Policy has that name but a plugin does, the plugin runs with its defaults.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from common.problems import Problem
from controlplane.models import Resource
from plugins import manager
from plugins.types import Plugin

DEFAULTS = {"scheduler": "binpack"}


class PolicyProblem(Problem):
    """A policy name that resolves to no usable plugin; ``fix`` says what to apply or name."""

    def __init__(self, message: str, fix: str, field: str = ""):
        super().__init__(message, field, fix)


def resolve(
    plugin_kind: str, name: str | None, pending_policies: dict[str, dict[str, Any]] | None = None
) -> tuple[Plugin, BaseModel]:
    """Return (implementation, params) for ``name``; ``pending_policies`` are Policy
    specs in the same apply, which count as existing."""
    name = name or DEFAULTS.get(plugin_kind)
    if name is None:
        raise PolicyProblem(f"no {plugin_kind} policy is set", f"set policies.{plugin_kind}")
    spec = (pending_policies or {}).get(name)
    if spec is None:
        spec = Resource.objects.filter(kind="Policy", name=name).values_list("spec", flat=True).first()
    if spec is not None:
        if spec.get("type") != plugin_kind:
            raise PolicyProblem(
                f"policy/{name} is a {spec.get('type')} policy, not a {plugin_kind} policy",
                f"name a Policy whose spec.type is {plugin_kind}",
            )
        plugin_name, params = spec["plugin"], spec.get("params", {})
    else:
        plugin_name, params = name, {}
    try:
        impl = manager.get(plugin_kind, plugin_name)
        return impl, manager.validate_params(impl, params)
    except manager.PluginError as exc:
        available = ", ".join(sorted(manager.registry().get(plugin_kind, {}))) or "none"
        raise PolicyProblem(
            f"{plugin_kind} {name!r} is neither a Policy nor an installed plugin"
            if spec is None
            else f"policy/{name}: {exc}",
            f"apply a Policy named {name!r} or use a plugin: {available}",
        ) from None
