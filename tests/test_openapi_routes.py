"""The OpenAPI document and the URL resolver agree: every route is described, with the
methods its view takes, and nothing is described that does not route.

Which routes the document must describe (decided in issue 17):

- everything under ``/api/v1/``. The generic ``<plural>`` routes stand for one path per
  kind (``/api/v1/deployments``, ...), as the document writes them; the final catch-all
  ``re_path`` only answers 404 for what nothing else matched, and is no route;
- ``/healthz``, ``/readyz`` and ``/metrics``: no token, outside ``/api/v1/``, but load
  balancers, Kubernetes probes and Prometheus call them, so they are described (with an
  empty ``security``);
- not the dashboard's pages: HTML for a logged-in browser (docs/dashboard.md).

Methods are read from what a view declares: the ``endpoint`` decorator's ``{METHOD: role}``
dict and Django's ``require_http_methods`` list, found in the closures along the view's
``__wrapped__`` chain (or a ``methods`` attribute, should the decorator ever set one). A
view that declares none takes any method, and only its path is checked:
``openapi_view``, ``healthz``, ``readyz``, listed in ``ANY_METHOD`` so that a decorator
whose methods can no longer be read fails here instead of passing silently.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator
from typing import Any

from django.urls import URLPattern, URLResolver, get_resolver

from common.specs import KINDS
from controlplane import openapi

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
DESCRIBED_PREFIXES = ("/api/v1/",)
DESCRIBED_OUTSIDE = {"/healthz", "/readyz", "/metrics"}
CATCH_ALL = "not_found"  # controlplane.api.not_found, the last /api/v1/ pattern
ANY_METHOD = {"openapi_view", "healthz", "readyz"}
CONVERTER = re.compile(r"<(?:[^>:]+:)?([^>]+)>")


def _routes(patterns: list[Any], prefix: str = "/") -> Iterator[tuple[str, Callable[..., Any]]]:
    for entry in patterns:
        if isinstance(entry, URLResolver):
            yield from _routes(entry.url_patterns, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            yield prefix + str(entry.pattern), entry.callback


def _described(path: str) -> bool:
    return path.startswith(DESCRIBED_PREFIXES) or path in DESCRIBED_OUTSIDE


def api_routes() -> dict[str, Callable[..., Any]]:
    """OpenAPI path template -> view, for every route the document must describe."""
    found: dict[str, Callable[..., Any]] = {}
    for route, view in _routes(get_resolver().url_patterns):
        if not _described(route) or view.__name__ == CATCH_ALL:
            continue
        template = CONVERTER.sub(r"{\1}", route)
        plurals = [info.plural for info in KINDS.values()] if "{plural}" in template else [None]
        for plural in plurals:
            path = template.replace("{plural}", plural) if plural else template
            found.setdefault(path, view)  # the first pattern wins, as in Django
    return found


def declared_methods(view: Callable[..., Any]) -> set[str] | None:
    """The methods a view says it takes, lower case; None when it does not say."""
    function: Any = view
    while function is not None:
        declared = getattr(function, "methods", None)
        if declared is None and inspect.isfunction(function):
            closure = inspect.getclosurevars(function).nonlocals
            declared = closure.get("methods", closure.get("request_method_list"))
        if declared is not None:
            return {method.lower() for method in declared}
        function = getattr(function, "__wrapped__", None)
    return None


def _operations(item: dict[str, Any]) -> set[str]:
    return set(item) & HTTP_METHODS


def test_the_resolver_reading_finds_the_kinds_and_the_probes():
    routes = api_routes()
    for info in KINDS.values():
        assert f"/api/v1/{info.plural}/{{name}}/status" in routes
    assert {"/healthz", "/readyz", "/metrics", "/api/v1/tokens/{prefix}"} <= set(routes)
    assert not any(path.startswith("/api/v1/") and "{path}" in path for path in routes)
    assert declared_methods(routes["/api/v1/tokens"]) == {"get", "post"}
    assert declared_methods(routes["/metrics"]) == {"get"}


def test_every_route_is_in_the_openapi_document():
    paths = openapi.document()["paths"]
    missing = sorted(set(api_routes()) - set(paths))
    assert not missing, f"routes missing from controlplane/openapi.py: {missing}"


def test_the_document_lists_the_methods_each_view_takes():
    paths = openapi.document()["paths"]
    wrong = []
    for path, view in sorted(api_routes().items()):
        methods = declared_methods(view)
        if methods is None:
            assert view.__name__ in ANY_METHOD, f"cannot read the methods of {view.__name__} ({path})"
            continue
        documented = _operations(paths.get(path, {}))
        if documented != methods:
            wrong.append(f"{path}: the view takes {sorted(methods)}, the document says {sorted(documented)}")
    assert not wrong, "\n".join(wrong)


def test_every_documented_path_is_a_route():
    """Resolving is not enough: ``<plural>`` matches any name, so compare with the kinds."""
    stale = sorted(set(openapi.document()["paths"]) - set(api_routes()))
    assert not stale, f"documented paths that are no route: {stale}"


def test_every_path_parameter_is_declared():
    undeclared = []
    for path, item in sorted(openapi.document()["paths"].items()):
        shared = {p["name"] for p in item.get("parameters", []) if p["in"] == "path"}
        for method in sorted(_operations(item)):
            own = {p["name"] for p in item[method].get("parameters", []) if p["in"] == "path"}
            for name in re.findall(r"{([^}]+)}", path):
                if name not in shared | own:
                    undeclared.append(f"{method.upper()} {path}: {{{name}}}")
    assert not undeclared, f"path parameters without a declaration: {undeclared}"


def test_only_the_probes_and_the_document_go_without_a_token():
    public = sorted(
        path
        for path, item in openapi.document()["paths"].items()
        for method in _operations(item)
        if item[method].get("security") == []
    )
    assert public == ["/api/v1/openapi.json", "/healthz", "/metrics", "/readyz"]
