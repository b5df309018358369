"""Every environment variable Flotilla reads is documented in docs/configuration.md.

The reads are found in the source, not by running it:

- Python (``PACKAGES``, migrations left out): the typed helpers of common/envhelpers.py
  (``envstr``, ``envbool``, ``envint``, ``envfloat``, ``envlist``), ``os.environ.get``,
  ``.setdefault``, ``.pop``, ``os.environ[...]``, ``... in os.environ`` and
  ``os.getenv``, with the name a string literal or a module-level string constant.
  ``NAME_FILE`` is not a name of its own: envstr reads it for every NAME, and the
  document's reading rules say so once;
- docker/entrypoint.sh: every ``$NAME`` and ``${NAME...}`` in upper case;
- the Helm templates: the ``FLOTILLA_*`` variables they expand themselves
  (``$(FLOTILLA_DB_PASSWORD)`` in a URL), which no code reads.

A name counts as documented when it appears in backquotes, so ``FLOTILLA_TOKEN`` is not
found inside ``FLOTILLA_TOKEN_CACHE_SECONDS``. A read whose name is computed fails the test
too, unless ``COMPUTED`` says why it may.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "configuration.md"
PACKAGES = ("agents", "cli", "common", "controlplane", "dashboard", "plugins")
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
HELM_TEMPLATES = ROOT / "helm" / "flotilla" / "templates"
ENV_HELPERS = {"envstr", "envbool", "envint", "envfloat", "envlist"}
ENVIRON_METHODS = {"get", "setdefault", "pop"}

# Read, but not Flotilla configuration: the reason is next to each.
NOT_CONFIGURATION: dict[str, str] = {
    # None today. An entry looks like "HOME": "why it is not Flotilla's to document".
}
# Files, and their functions, allowed to read a variable whose name they are given.
COMPUTED = {
    # The helpers themselves: they read the NAME (and NAME_FILE) their callers pass,
    # and every caller is scanned for that name.
    ("common/envhelpers.py", "envstr"),
    ("common/envhelpers.py", "envbool"),
    ("common/envhelpers.py", "_envnumber"),
    ("common/envhelpers.py", "envlist"),
}
# Helm: NOTES.txt is what the operator reads after an install; its $VARIABLES are their
# own shell's (``$FLOTILLA_ADMIN_TOKEN``), which nothing in Flotilla reads.
HELM_SKIPPED = {"NOTES.txt"}
SHELL_VARIABLE = re.compile(r"\$\{?([A-Z][A-Z0-9_]*)")
KUBERNETES_EXPANSION = re.compile(r"\$\(?\{?(FLOTILLA_[A-Z0-9_]+)")


def _python_files() -> Iterator[Path]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" not in path.relative_to(ROOT).parts:
                yield path


def _is_environ(node: ast.expr) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (
        isinstance(node, ast.Name) and node.id == "environ"
    )


def _name_argument(call: ast.Call) -> ast.expr | None:
    """The expression naming the variable, when ``call`` reads one."""
    func = call.func
    called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    reads = (
        called in ENV_HELPERS
        or called == "getenv"
        or (called in ENVIRON_METHODS and isinstance(func, ast.Attribute) and _is_environ(func.value))
    )
    return call.args[0] if reads and call.args else None


def _reads(tree: ast.Module) -> Iterator[tuple[ast.expr, str]]:
    """(expression naming the variable, enclosing function) for each read in a module."""

    def walk(node: ast.AST, function: str) -> Iterator[tuple[ast.expr, str]]:
        for child in ast.iter_child_nodes(node):
            inside = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else function
            if isinstance(child, ast.Call) and (argument := _name_argument(child)) is not None:
                yield argument, inside
            elif (
                isinstance(child, ast.Subscript)
                and isinstance(child.ctx, ast.Load)
                and _is_environ(child.value)
            ):
                yield child.slice, inside
            elif (
                isinstance(child, ast.Compare)
                and isinstance(child.ops[0], ast.In)
                and _is_environ(child.comparators[0])
            ):
                yield child.left, inside
            yield from walk(child, inside)

    return walk(tree, "")


def _constants(tree: ast.Module) -> dict[str, str]:
    """Module-level ``NAME = "literal"``: how telemetry/store.py names its variables."""
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            if isinstance(node.value.value, str):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        found[target.id] = node.value.value
    return found


@cache
def python_reads() -> tuple[dict[str, set[str]], list[str]]:
    """Variable -> files reading it, and the reads whose name cannot be read."""
    names: dict[str, set[str]] = {}
    computed: list[str] = []
    for path in _python_files():
        relative = str(path.relative_to(ROOT))
        tree = ast.parse(path.read_text(), relative)
        constants = _constants(tree)
        for expression, function in _reads(tree):
            if isinstance(expression, ast.Constant) and isinstance(expression.value, str):
                name = expression.value
            elif isinstance(expression, ast.Name) and expression.id in constants:
                name = constants[expression.id]
            else:
                if (relative, function) not in COMPUTED:
                    computed.append(f"{relative}:{expression.lineno} in {function or 'the module'}")
                continue
            names.setdefault(name, set()).add(relative)
    return names, computed


def shell_reads() -> dict[str, set[str]]:
    names: dict[str, set[str]] = {}
    for line in ENTRYPOINT.read_text().splitlines():
        if not line.lstrip().startswith("#"):
            for name in SHELL_VARIABLE.findall(line):
                names.setdefault(name, set()).add("docker/entrypoint.sh")
    return names


def helm_reads() -> dict[str, set[str]]:
    names: dict[str, set[str]] = {}
    for path in sorted(HELM_TEMPLATES.iterdir()):
        if path.name not in HELM_SKIPPED:
            for name in KUBERNETES_EXPANSION.findall(path.read_text()):
                names.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return names


def every_read() -> dict[str, set[str]]:
    merged: dict[str, set[str]] = {}
    for found in (python_reads()[0], shell_reads(), helm_reads()):
        for name, files in found.items():
            merged.setdefault(name, set()).update(files)
    return merged


def test_the_scanner_finds_each_kind_of_read():
    names = every_read()
    expected = {
        "SECRET_KEY": "controlplane/settings.py",  # envstr
        "FLOTILLA_TELEMETRY_RAW_SECONDS": "controlplane/telemetry/store.py",  # through a constant
        "FLOTILLA_SERVER": "common/client.py",  # os.environ.get
        "KUBERNETES_SERVICE_HOST": "controlplane/kube/client.py",
        "DJANGO_SETTINGS_MODULE": "controlplane/wsgi.py",  # setdefault
        "FLOTILLA_WEB_THREADS": "cli/up.py",
        "FLOTILLA_WEB_WORKERS": "docker/entrypoint.sh",
        "FLOTILLA_DB_PASSWORD": "helm/flotilla/templates/_helpers.tpl",
    }
    for name, where in expected.items():
        assert where in names.get(name, set()), (name, names.get(name))
    assert "GUNICORN_CMD_ARGS" not in names  # named in a comment only: gunicorn reads it


def test_every_name_is_read_the_same_way_or_explained():
    _, computed = python_reads()
    assert not computed, (
        "environment reads whose variable name is computed; use a literal or a module "
        f"constant, or add the function to COMPUTED with the reason: {computed}"
    )


def test_every_variable_read_is_documented():
    documented = DOC.read_text()
    missing = sorted(
        f"{name} (read in {', '.join(sorted(files))})"
        for name, files in every_read().items()
        if name not in NOT_CONFIGURATION and f"`{name}`" not in documented
    )
    assert not missing, "add these to docs/configuration.md:\n  " + "\n  ".join(missing)


def test_the_exclusions_are_still_read():
    stale = sorted(set(NOT_CONFIGURATION) - set(every_read()))
    assert not stale, f"NOT_CONFIGURATION names variables nothing reads any more: {stale}"
