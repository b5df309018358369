"""Policies and the plugins they select.

A Policy names a plugin of its type and its parameters; Deployments, TrainingJobs
and Clusters name Policies (or plugins directly) in the fields the kinds table
(``plugins.types.PLUGIN_KIND_TABLE``) lists. Who names what, and whether a Policy
is usable, are ``controlplane.policies``' rules; this module only shows them.

The page answers "what does this policy do, is it valid, and what would deleting it
break", then lists every installed plugin with its parameter schema (what
``GET /api/v1/plugins`` serves), so an operator can write a Policy without reading
plugin source.
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import path

from controlplane.models import Resource
from controlplane.policies import plugin_for, users_by_name
from dashboard.common import page_of
from dashboard.roles import needs
from plugins import manager
from plugins.types import PLUGIN_KINDS, default_plugin, selectors


def selected_by(kind: str) -> str:
    """Where a kind is selected, read from the kinds table, for its heading:
    "policies.scheduler on a Deployment, TrainingJob or Cluster"."""
    owners: dict[str, list[str]] = {}
    for of_kind, selector in selectors():
        if of_kind == kind:
            owners.setdefault(selector.path.removeprefix("spec."), []).append(selector.owner)
    return "; ".join(f"{path} on a {_either(names)}" for path, names in owners.items())


def _either(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def check(spec: dict[str, Any]) -> str | None:
    """Why this Policy cannot be used as it stands (plugin gone, params no longer valid), or None.

    Apply validated it, but a plugin can be uninstalled or upgraded afterwards; the
    owners using it would then fail to schedule with the same message.
    """
    try:
        plugin_for(spec)
    except manager.PluginError as exc:
        details = "; ".join(f"{e['field']}: {e['message']}" for e in exc.errors)
        return f"{exc}{': ' + details if details else ''} ({exc.fix})" if exc.fix else str(exc)
    return None


def policy_rows(
    page_items: list[Resource], users: dict[str, list[str]], loaded: bool
) -> list[dict[str, Any]]:
    """The page's Policies; ``loaded`` is False when the plugin set itself failed to load,
    in which case no Policy is checked (each would fail with the same message)."""
    rows = []
    for policy in page_items:
        params = policy.spec.get("params") or {}
        rows.append(
            {
                "name": policy.name,
                "type": policy.spec.get("type"),
                "plugin": policy.spec.get("plugin"),
                "params": params,
                "params_yaml": yaml.safe_dump(params, sort_keys=True, default_flow_style=False).strip(),
                "users": users.get(policy.name, []),
                "problem": check(policy.spec) if loaded else None,
            }
        )
    return rows


def schema_rows(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """A parameter schema's top-level properties as table rows (name, type, default, description)."""
    required = set(schema.get("required") or [])
    rows = []
    for name, prop in (schema.get("properties") or {}).items():
        types = prop.get("type") or " | ".join(p.get("type", "?") for p in prop.get("anyOf") or []) or "any"
        rows.append(
            {
                "name": name,
                "type": types,
                # JSON spelling (false, null), as it is written in a Policy's params.
                "default": json.dumps(prop["default"]) if "default" in prop else None,
                "required": name in required,
                "description": prop.get("description", ""),
                "enum": prop.get("enum"),
            }
        )
    return rows


def plugins_by_kind(policy_names: set[str], users: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Installed plugins grouped by kind (in the hook order), each with its schema and the
    objects that select it by plugin name directly (no Policy of that name)."""
    grouped: dict[str, list[dict[str, Any]]] = {kind: [] for kind in PLUGIN_KINDS}
    for item in manager.describe():
        schema = item["paramsSchema"]
        grouped.setdefault(item["kind"], []).append(
            {
                **item,
                "params": schema_rows(schema),
                "schema_yaml": yaml.safe_dump(schema, sort_keys=False).strip(),
                "direct_users": [] if item["name"] in policy_names else users.get(item["name"], []),
                "is_default": default_plugin(item["kind"]) == item["name"],
            }
        )
    return [
        {
            "kind": kind,
            "plugins": sorted(items, key=lambda p: p["name"]),
            "selected_by": selected_by(kind),
        }
        for kind, items in grouped.items()
    ]


def _plugin_problem() -> str | None:
    """A plugin set that cannot load (two plugins with one name, a bad module) is shown, not a 500."""
    try:
        manager.registry()
    except Exception as exc:  # ConfigError or PluginError: both carry a message worth showing
        return str(exc)
    return None


@needs("viewer")
def policies(request: HttpRequest) -> HttpResponse:
    users = users_by_name()
    page = page_of(request, Resource.objects.filter(kind="Policy").order_by("name"))
    problem = _plugin_problem()
    policy_names = set(Resource.objects.filter(kind="Policy").values_list("name", flat=True))
    context = {
        "page": page,
        "pager_query": "",
        "policies": policy_rows(list(page.object_list), users, loaded=problem is None),
        "kinds": [] if problem else plugins_by_kind(policy_names, users),
        "plugin_problem": problem,
    }
    return render(request, "dashboard/policies.html", context)


urlpatterns = [path("policies/", policies, name="policies")]
