"""Turn the plugin a Workload's ``spec.config`` names into an implementation on this node.

The control plane resolved the policy name already and wrote ``{"policy", "plugin",
"params"}`` into the config (controlplane/controllers/workload_config.py); the node
looks the plugin up in its own registry (built-ins, ``FLOTILLA_PLUGIN_MODULES`` and
installed entry points) and validates the parameters again with the plugin's own
schema, because the node's copy of a plugin may differ from the control plane's.
No Django here: a runtime has no database.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from common.envhelpers import ConfigError
from common.problems import Problem
from plugins import manager
from plugins.types import Plugin


class PluginChoiceError(Problem):
    """The config names a plugin this node cannot run; the message starts with ``field``,
    the config path, because a runtime's error ends up in a Workload's status."""


@dataclass(frozen=True)
class PluginChoice:
    """A resolved choice: the implementation, its validated parameters, and the policy it came from."""

    impl: Plugin
    params: BaseModel
    policy: str | None = None

    @property
    def name(self) -> str:
        return self.impl.name


def resolve(kind: str, section: Any, field: str) -> PluginChoice:
    """The plugin ``section`` (``config[field]``) names, or a :class:`PluginChoiceError`."""
    if not isinstance(section, dict):
        fix = 'send {"plugin": NAME, "params": {...}}'
        raise PluginChoiceError(f"{field}: must be an object", field, fix)
    name = section.get("plugin")
    if not isinstance(name, str) or not name:
        raise PluginChoiceError(f"{field}.plugin: missing", f"{field}.plugin", f"name the {kind} plugin")
    params = section.get("params") or {}
    if not isinstance(params, dict):
        raise PluginChoiceError(f"{field}.params: must be an object", f"{field}.params", "send a map")
    policy = section.get("policy")
    try:
        installed = manager.registry().get(kind, {})
    except (manager.PluginError, ConfigError) as exc:  # two plugins by one name; a bad FLOTILLA_PLUGIN_*
        fix = getattr(exc, "fix", "") or "fix the node's plugin settings"
        raise PluginChoiceError(f"{field}.plugin: {exc}", f"{field}.plugin", fix) from None
    if name not in installed:
        raise PluginChoiceError(
            f"{field}.plugin: no {kind} plugin named {name!r} is installed on this node "
            f"(installed: {', '.join(sorted(installed)) or 'none'})",
            f"{field}.plugin",
            f"install the package that provides {name!r} on the node (it registers in the "
            "'flotilla' entry-point group), or name a Policy whose plugin is installed",
        )
    impl = installed[name]
    try:
        validated = manager.validate_params(impl, params)
    except manager.PluginError as exc:
        bad = "; ".join(
            f"{e['field'].replace('spec.params', f'{field}.params', 1)}: {e['message']}" for e in exc.errors
        )
        raise PluginChoiceError(
            f"{field}.params: {exc} ({bad})",
            f"{field}.params",
            "the node's copy of the plugin rejects these parameters: install the same version "
            "as the control plane's",
        ) from None
    return PluginChoice(impl=impl, params=validated, policy=policy if isinstance(policy, str) else None)
