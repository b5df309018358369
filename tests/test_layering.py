"""The layers of DESIGN §1 hold in the code: no import cycles, and the light packages
never reach up into the Django ones.

The import graph is read from the source, not by importing it. A node is a project module
(a ``.py`` file under one of ``PACKAGES``; migrations are left out). An edge ``a -> b``
means running ``a`` may import ``b``:

- every ``import`` and ``from ... import`` anywhere in ``a``: at module level, inside
  functions (deferred imports still run, just later), in ``try`` blocks. ``from p import
  name`` is an edge to ``p.name`` when that is a module, else to ``p``;
- except those under ``if TYPE_CHECKING:``, which only type checkers run (their ``else``
  branch does run, and counts);
- imports by name that the code spells out: ``importlib.import_module("x")`` and Django's
  ``include("x")`` with a literal, and, in a module that calls ``import_module`` on a
  variable, every string literal in it naming a project module (the plugin manager's
  ``BUILTIN_MODULES``).

A parent package is not an edge of its submodules' importers: Python runs ``p/__init__.py``
before ``p.m``, but a package re-exporting its own submodules would then be a cycle with
each of them, which is harmless. The reach test for ``common`` does follow parents, since
there what runs is the point.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("agents", "cli", "common", "controlplane", "dashboard", "plugins")
LIGHT = ("agents", "cli", "common", "plugins")  # never import the Django packages
DJANGO_PACKAGES = ("controlplane", "dashboard")
# common/specs.py takes the plugin kind names from their one table (decided in issue 17).
COMMON_MAY_IMPORT = {"plugins", "plugins.types"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" not in path.relative_to(ROOT).parts:
                found[_module_name(path)] = path
    return found


def _resolve(name: str) -> str | None:
    """The project module that importing ``name`` runs last, or None outside the project."""
    while name and name not in modules():
        name = name.rpartition(".")[0]
    return name or None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of the tree except the bodies of ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _called_name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _imported(module: str, path: Path) -> set[str]:
    """Dotted names that running ``module`` may import (not yet resolved)."""
    names: set[str] = set()
    by_variable = False
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module if path.name == "__init__.py" else module.rpartition(".")[0]
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = ".".join(filter(None, [base, node.module]))
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                names.add(submodule if submodule in modules() else base)
        elif isinstance(node, ast.Call) and _called_name(node) in {"import_module", "include"}:
            argument = node.args[0] if node.args else None
            if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                names.add(argument.value)
            elif _called_name(node) == "import_module":
                by_variable = True
    if by_variable:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in modules():
                names.add(node.value)
    return names


@cache
def graph() -> dict[str, frozenset[str]]:
    edges = {}
    for module, path in modules().items():
        targets = {_resolve(name) for name in _imported(module, path)}
        edges[module] = frozenset(t for t in targets if t is not None and t != module)
    return edges


def strongly_connected(edges: dict[str, frozenset[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; only the components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def _cycle_in(component: list[str], edges: dict[str, frozenset[str]]) -> list[str]:
    """One concrete cycle through the component's first module, for the failure message."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(edges[node] & members):
                if child == start:
                    return [*paths[node], start]
                if child not in paths:
                    paths[child] = [*paths[node], child]
                    following.append(child)
        frontier = following
    return component  # not reached: a component always has a cycle through each member


def _package(module: str) -> str:
    return module.partition(".")[0]


def _where(module: str, target: str) -> str:
    return f"{modules()[module].relative_to(ROOT)}: imports {target}"


# --- the graph reader itself ------------------------------------------------------------


def test_tarjan_finds_each_cycle_and_nothing_else():
    edges = {
        "a": frozenset({"b"}),
        "b": frozenset({"c"}),
        "c": frozenset({"a", "d"}),
        "d": frozenset({"e"}),
        "e": frozenset({"d"}),
        "f": frozenset({"a"}),
    }
    assert strongly_connected(edges) == [["a", "b", "c"], ["d", "e"]]
    assert _cycle_in(["a", "b", "c"], edges) == ["a", "b", "c", "a"]


def test_the_reader_sees_deferred_imports_and_skips_type_checking_blocks(tmp_path):
    source = (
        "from typing import TYPE_CHECKING\n"
        "import controlplane.store\n"
        "from . import models\n"
        "if TYPE_CHECKING:\n"
        "    from controlplane import watch\n"
        "else:\n"
        "    import controlplane.events\n"
        "def later():\n"
        "    from controlplane.auth import authenticate\n"
        "    importlib.import_module('controlplane.leases')\n"
    )
    path = tmp_path / "fake.py"
    path.write_text(source)
    resolved = {_resolve(name) for name in _imported("controlplane.fake", path)}
    assert resolved == {
        "controlplane.store",
        "controlplane.models",
        "controlplane.events",
        "controlplane.auth",
        "controlplane.leases",
        None,  # typing
    }


def test_the_graph_covers_every_package_and_the_dynamic_plugin_imports():
    assert {_package(m) for m in modules()} == set(PACKAGES)
    assert not any(".migrations" in m for m in modules())
    assert "plugins.binpack" in graph()["plugins.manager"]  # BUILTIN_MODULES, by name
    assert "dashboard.urls" in graph()["controlplane.urls"]  # include("dashboard.urls")


# --- the rules --------------------------------------------------------------------------


def _describe(component: list[str], edges: dict[str, frozenset[str]]) -> str:
    """One cycle, then every edge inside the component: each is a place to cut."""
    inside = set(component)
    lines = [" -> ".join(_cycle_in(component, edges))]
    for module in component:
        lines.append(f"    {module} imports {', '.join(sorted(edges[module] & inside))}")
    return "\n".join(lines)


def test_the_project_has_no_import_cycles():
    edges = graph()
    components = strongly_connected(edges)
    report = "\n  ".join(_describe(c, edges) for c in components)
    assert not components, f"{len(components)} import cycle(s):\n  {report}"


def test_agents_plugins_common_and_cli_never_import_the_django_packages():
    wrong = [
        _where(module, target)
        for module, targets in sorted(graph().items())
        if _package(module) in LIGHT
        for target in sorted(targets)
        if _package(target) in DJANGO_PACKAGES
    ]
    assert not wrong, "the light packages import the Django ones:\n  " + "\n  ".join(wrong)


def test_common_stands_on_nothing_but_itself_and_the_plugin_kind_names():
    wrong = [
        _where(module, target)
        for module, targets in sorted(graph().items())
        if _package(module) == "common"
        for target in sorted(targets)
        if _package(target) != "common" and target not in COMMON_MAY_IMPORT
    ]
    assert not wrong, "common/ imports another Flotilla package:\n  " + "\n  ".join(wrong)


def test_what_common_runs_stays_on_the_ground_floor():
    """Transitively, parent packages included: plugins.types must not pull the rest in."""
    seen: set[str] = set()
    todo = [m for m in modules() if _package(m) == "common"]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parents = [module.rsplit(".", depth)[0] for depth in range(1, module.count(".") + 1)]
        todo.extend([*graph()[module], *parents])
    outside = sorted(m for m in seen if _package(m) != "common" and m not in COMMON_MAY_IMPORT)
    assert not outside, f"importing common/ runs {outside}"


PURE_MODULES = [
    "common.specs",
    "plugins.types",
    "plugins.binpack",
    "plugins.manager",
    "agents.devices",
    "agents.agent",
    "agents.supervisor",
    "cli.main",
]


def test_pure_modules_import_without_django():
    """Run for real in a fresh interpreter, built-in plugins loaded by the manager too:
    an agent, a plugin and the CLI start without Django, Celery or the control plane."""
    code = (
        "import importlib, sys\n"
        f"for name in {PURE_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "sys.modules['plugins.manager'].make_manager([], False)\n"
        "heavy = ('django', 'celery', 'controlplane', 'dashboard')\n"
        "loaded = sorted(m for m in sys.modules if m.partition('.')[0] in heavy)\n"
        "print('LOADED:' + ','.join(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "LOADED:", result.stdout
