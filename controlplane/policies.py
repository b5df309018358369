"""The policy rules: what a Policy's plugin is, what a name resolves to, who names a Policy.

A name under ``policies:`` (or ``checkpoint.policy``) refers to a Policy of the right
type; where no Policy has that name but a plugin does, the plugin runs with its
defaults. Which spec fields name Policies, and each kind's default, are
``plugins.types.PLUGIN_KIND_TABLE``'s. Apply, the API's delete guard, the owner
controller and the dashboard all use these functions, so the rules live here once.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from pydantic import BaseModel

from common.problems import Problem
from controlplane.models import Resource
from plugins import manager
from plugins.types import Plugin, default_plugin, owner_kinds, selectors


class PolicyProblem(Problem):
    """A policy name that resolves to no usable plugin; ``fix`` says what to apply or name."""

    def __init__(self, message: str, fix: str, field: str = ""):
        super().__init__(message, field, fix)


def plugin_for(spec: dict[str, Any]) -> tuple[Plugin, BaseModel]:
    """The plugin a Policy spec selects, with its params validated.

    Raises ``manager.PluginError`` naming ``spec.plugin`` or ``spec.params.*``. Apply
    checks new Policies with it, and the dashboard stored ones, whose plugin may have
    been uninstalled or upgraded since.
    """
    impl = manager.get(spec.get("type", ""), spec.get("plugin", ""))
    return impl, manager.validate_params(impl, spec.get("params") or {})


def resolve(
    plugin_kind: str, name: str | None, pending_policies: dict[str, dict[str, Any]] | None = None
) -> tuple[Plugin, BaseModel]:
    """Return (implementation, params) for ``name``; ``pending_policies`` are Policy
    specs in the same apply, which count as existing."""
    name = name or default_plugin(plugin_kind)
    if name is None:
        raise PolicyProblem(f"no {plugin_kind} policy is set", f"set policies.{plugin_kind}")
    spec = (pending_policies or {}).get(name)
    if spec is None:
        spec = Resource.objects.filter(kind="Policy", name=name).values_list("spec", flat=True).first()
    if spec is not None and spec.get("type") != plugin_kind:
        raise PolicyProblem(
            f"policy/{name} is a {spec.get('type')} policy, not a {plugin_kind} policy",
            f"name a Policy whose spec.type is {plugin_kind}",
        )
    try:
        return plugin_for(spec if spec is not None else {"type": plugin_kind, "plugin": name})
    except manager.PluginError as exc:
        available = ", ".join(sorted(manager.registry().get(plugin_kind, {}))) or "none"
        raise PolicyProblem(
            f"{plugin_kind} {name!r} is neither a Policy nor an installed plugin"
            if spec is None
            else f"policy/{name}: {exc}",
            f"apply a Policy named {name!r} or use a plugin: {available}",
        ) from None


def references(owner_kind: str, spec: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(field path, plugin kind, name) for every Policy or plugin name ``spec`` holds."""
    return [
        (selector.path, kind, name)
        for kind, selector in selectors(owner_kind)
        if (name := selector.read(spec)) is not None
    ]


def users_by_name() -> dict[str, list[str]]:
    """Every name a Deployment, TrainingJob or Cluster selects -> the objects naming it
    (``kind/name``, sorted), in one pass over the owners."""
    users: dict[str, list[str]] = defaultdict(list)
    rows = Resource.objects.filter(kind__in=owner_kinds()).order_by("kind", "name")
    for kind, name, spec in rows.values_list("kind", "name", "spec"):
        for policy in sorted({named for _, _, named in references(kind, spec)}):
            users[policy].append(f"{kind.lower()}/{name}")
    return users


def users_of(policy: str) -> list[str]:
    """The objects that name ``policy``: a Policy they name must not be deleted."""
    return users_by_name().get(policy, [])
