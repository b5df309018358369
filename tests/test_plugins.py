"""The plugin manager, the registry by kind and name, parameter validation, and the hooks themselves."""

from __future__ import annotations

import inspect
import os
import re
import sys
import types
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, ConfigDict, Field

from controlplane import events
from controlplane.apply import apply
from controlplane.errors import Invalid
from plugins import binpack, hookspecs, manager
from plugins import types as plugin_types
from plugins.hookspecs import hookimpl
from plugins.types import (
    PLUGIN_KIND_TABLE,
    PLUGIN_KINDS,
    FleetView,
    Gpu,
    NodeView,
    Placement,
    PlacementRequest,
    Plugin,
)

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
DOCS = ROOT / "docs" / "plugins.md"

HOOKS = sorted(name for name, value in vars(hookspecs).items() if hasattr(value, "flotilla_spec"))


# --- a plugin made in the test ----------------------------------------------------


class Window(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(gt=0)


class TtlParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    capacityTokens: int = Field(default=1024, ge=1)
    window: Window = Field(default_factory=lambda: Window(seconds=60))


class TtlCache:
    name: ClassVar[str] = "ttl-test"
    kind: ClassVar[str] = "cache"
    description: ClassVar[str] = "A KV cache that pins sessions for a while."
    Params: ClassVar[type[BaseModel]] = TtlParams


class BlockingCheckpointer:
    name: ClassVar[str] = "blocking-test"
    kind: ClassVar[str] = "checkpointer"
    description: ClassVar[str] = "Saves state synchronously."
    Params: ClassVar[type[BaseModel]] = TtlParams


class StaticPowercap:
    name: ClassVar[str] = "static-test"
    kind: ClassVar[str] = "powercap"
    description: ClassVar[str] = "One power limit for every GPU."
    Params: ClassVar[type[BaseModel]] = binpack.BinpackParams


class FirstFit:
    name: ClassVar[str] = "first-fit-test"
    kind: ClassVar[str] = "scheduler"
    description: ClassVar[str] = "The first free GPU."
    Params: ClassVar[type[BaseModel]] = binpack.BinpackParams


class TestPlugin:
    """One plugin object implementing every hook, the way a third-party package would."""

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    @hookimpl
    def register_schedulers(self):
        return [FirstFit()]

    @hookimpl
    def register_caches(self):
        return [TtlCache()]

    @hookimpl
    def register_checkpointers(self):
        return [BlockingCheckpointer()]

    @hookimpl
    def register_powercaps(self):
        return [StaticPowercap()]

    @hookimpl
    def event_recorded(self, event):
        self.seen.append(event)


class WrongKind:
    """Returns a cache from the powercap hook."""

    @hookimpl
    def register_powercaps(self):
        return [TtlCache()]


def manager_with(*plugins: object):
    pm = manager.make_manager([])
    for plugin in plugins:
        pm.register(plugin)
    return pm


@pytest.fixture(autouse=True)
def fresh_plugins():
    manager.reset()
    yield
    manager.reset()


@pytest.fixture
def plugin_module(monkeypatch) -> types.ModuleType:
    """A module importable by dotted path, holding TestPlugin's hooks, for FLOTILLA_PLUGIN_MODULES."""
    module = types.ModuleType("flotilla_test_plugin")
    plugin = TestPlugin()
    for hook in HOOKS:
        setattr(module, hook, getattr(plugin, hook))
    module.plugin = plugin  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setenv("FLOTILLA_PLUGIN_MODULES", module.__name__)
    manager.reset()
    return module


# --- the registry -----------------------------------------------------------------


def test_the_registry_has_binpack_under_scheduler():
    registry = manager.registry()
    assert set(registry) == set(PLUGIN_KINDS)
    assert isinstance(registry["scheduler"]["binpack"], binpack.Binpack)


def test_the_tests_load_no_third_party_entry_points():
    assert os.environ["FLOTILLA_LOAD_ENTRYPOINTS"] == "false"
    names = {name for name, _ in manager.get_manager().list_name_plugin()}
    assert names == set(manager.BUILTIN_MODULES)


def test_every_registered_implementation_satisfies_the_plugin_protocol():
    for kind, impls in manager.registry().items():
        for name, impl in impls.items():
            assert isinstance(impl, Plugin)
            assert (impl.kind, impl.name) == (kind, name)
            assert impl.description


def test_get_returns_the_named_plugin():
    assert manager.get("scheduler", "binpack").name == "binpack"


def test_get_names_the_field_and_the_choices_for_an_unknown_plugin():
    with pytest.raises(manager.PluginError) as excinfo:
        manager.get("scheduler", "melange-typo")
    assert str(excinfo.value) == "no scheduler plugin named 'melange-typo'"
    assert excinfo.value.field == "spec.plugin"
    assert excinfo.value.fix == "use one of: binpack, distserve, melange, spread"


def test_get_names_the_installed_plugins_of_the_kind_when_the_name_is_unknown():
    with pytest.raises(manager.PluginError) as excinfo:
        manager.get("powercap", "nope")
    assert excinfo.value.fix == "use one of: none, polca, static"


def test_flotilla_plugins_restricts_what_is_selectable(monkeypatch, plugin_module):
    monkeypatch.setenv("FLOTILLA_PLUGINS", "first-fit-test, ttl-test")
    manager.reset()
    registry = manager.registry()
    assert set(registry["scheduler"]) == {"first-fit-test"}
    assert set(registry["cache"]) == {"ttl-test"}
    assert registry["checkpointer"] == {}
    assert registry["powercap"] == {}
    with pytest.raises(manager.PluginError, match="no scheduler plugin named 'binpack'"):
        manager.get("scheduler", "binpack")


def test_flotilla_plugins_can_leave_only_the_builtin(monkeypatch, plugin_module):
    monkeypatch.setenv("FLOTILLA_PLUGINS", "binpack")
    manager.reset()
    assert [impl["name"] for impl in manager.describe()] == ["binpack"]


def test_reset_forgets_a_restriction_once_the_environment_changes_back(monkeypatch):
    monkeypatch.setenv("FLOTILLA_PLUGINS", "nothing-by-this-name")
    manager.reset()
    assert manager.registry()["scheduler"] == {}
    monkeypatch.delenv("FLOTILLA_PLUGINS")
    manager.reset()
    assert "binpack" in manager.registry()["scheduler"]


def test_flotilla_plugin_modules_loads_an_extra_module(plugin_module):
    names = {name for name, _ in manager.get_manager().list_name_plugin()}
    assert "flotilla_test_plugin" in names
    registry = manager.registry()
    assert isinstance(registry["scheduler"]["first-fit-test"], FirstFit)
    assert isinstance(registry["cache"]["ttl-test"], TtlCache)
    assert isinstance(registry["checkpointer"]["blocking-test"], BlockingCheckpointer)
    assert isinstance(registry["powercap"]["static-test"], StaticPowercap)
    assert "binpack" in registry["scheduler"]


def test_build_registry_picks_up_a_registered_plugin_by_kind_and_name():
    registry = manager.build_registry(manager_with(TestPlugin()))
    assert {kind: sorted(impls) for kind, impls in registry.items()} == {
        "scheduler": ["binpack", "distserve", "first-fit-test", "melange", "spread"],
        "cache": [
            "least-loaded",
            "none",
            "prefix-aware",
            "prefix-lru",
            "round-robin",
            "session-ttl",
            "ttl-test",
        ],
        "checkpointer": ["blocking", "blocking-test", "lazy-async", "memory-snapshot"],
        "powercap": ["none", "polca", "static", "static-test"],
    }


def test_build_registry_rejects_a_plugin_that_declares_the_wrong_kind():
    with pytest.raises(manager.PluginError) as excinfo:
        manager.build_registry(manager_with(WrongKind()))
    assert "'ttl-test'" in str(excinfo.value)
    assert "'cache'" in str(excinfo.value)
    assert "register_powercaps" in str(excinfo.value)


def test_describe_lists_each_plugin_with_its_parameter_schema(plugin_module):
    described = {(item["kind"], item["name"]): item for item in manager.describe()}
    binpack_entry = described[("scheduler", "binpack")]
    assert binpack_entry["description"] == binpack.Binpack.description
    assert "spread" in binpack_entry["paramsSchema"]["properties"]
    assert set(described[("cache", "ttl-test")]["paramsSchema"]["properties"]) == {"capacityTokens", "window"}


# --- parameters -------------------------------------------------------------------


def test_validate_params_returns_the_plugins_params_model():
    params = manager.validate_params(binpack.Binpack(), {"spread": True})
    assert isinstance(params, binpack.BinpackParams)
    assert params.spread is True


def test_validate_params_fills_defaults_for_no_params():
    assert manager.validate_params(TtlCache(), None).capacityTokens == 1024  # type: ignore[arg-type]


def test_validate_params_errors_name_spec_params_and_the_field():
    with pytest.raises(manager.PluginError) as excinfo:
        manager.validate_params(TtlCache(), {"capacityTokens": 0, "colour": "red"})
    error = excinfo.value
    assert str(error) == "bad parameters for cache plugin 'ttl-test'"
    assert error.field == "spec.params"
    assert "flotilla plugins" in error.fix
    assert sorted(e["field"] for e in error.errors) == ["spec.params.capacityTokens", "spec.params.colour"]
    assert all(e["message"] for e in error.errors)


def test_validate_params_errors_name_nested_fields_with_dots():
    with pytest.raises(manager.PluginError) as excinfo:
        manager.validate_params(TtlCache(), {"window": {"seconds": -1}})
    assert [e["field"] for e in excinfo.value.errors] == ["spec.params.window.seconds"]


def policy(name: str, plugin: str, params: dict[str, Any] | None = None, type_: str = "scheduler") -> dict:
    return {
        "apiVersion": "flotilla.dev/v1",
        "kind": "Policy",
        "metadata": {"name": name},
        "spec": {"type": type_, "plugin": plugin, "params": params or {}},
    }


def test_apply_accepts_a_policy_with_good_parameters(db):
    (outcome,) = apply([policy("spread-out", "binpack", {"spread": True})], actor="test")
    assert outcome.action == "created"


def test_apply_rejects_a_policy_with_bad_parameters_naming_the_field(db):
    with pytest.raises(Invalid) as excinfo:
        apply([policy("spread-out", "binpack", {"sprad": True})], actor="test")
    (detail,) = excinfo.value.details
    assert detail["document"] == 0
    assert detail["field"] == "spec.params.sprad"
    assert "flotilla plugins" in detail["fix"]


def test_apply_rejects_a_policy_that_names_an_unknown_plugin(db):
    with pytest.raises(Invalid) as excinfo:
        apply([policy("fancy", "no-such-plugin")], actor="test")
    (detail,) = excinfo.value.details
    assert detail["field"] == "spec.plugin"
    assert detail["fix"] == "use one of: binpack, distserve, melange, spread"


def test_apply_rejects_a_plugin_of_another_kind_under_the_same_name(db):
    with pytest.raises(Invalid) as excinfo:
        apply([policy("oops", "binpack", type_="cache")], actor="test")
    assert excinfo.value.details[0]["message"] == "no cache plugin named 'binpack'"


# --- each hook, called through a manager --------------------------------------------


def test_hook_register_schedulers_returns_named_schedulers():
    batches = manager_with(TestPlugin()).hook.register_schedulers()
    names = sorted(impl.name for batch in batches for impl in batch)
    assert names == ["binpack", "distserve", "first-fit-test", "melange", "spread"]


def test_hook_register_schedulers_gives_schedulers_that_place_replicas():
    builtins = [impl for batch in manager.make_manager([]).hook.register_schedulers() for impl in batch]
    assert len(builtins) == 4
    for builtin in builtins:
        fleet = FleetView([NodeView("gpu-a", None, {}, True, True, [Gpu(0, "H100", 81559)])])
        request = PlacementRequest(owner_kind="Deployment", owner_name="chat", replicas=1)
        result = builtin.place(request=request, fleet=fleet, params=builtin.Params())
        assert result.placements == [Placement("gpu-a", [0], "serve")], builtin.name


def test_hook_register_caches_returns_named_caches():
    builtin = ["round-robin", "least-loaded", "prefix-aware", "none", "prefix-lru", "session-ttl"]
    assert [[impl.name for impl in batch] for batch in manager.make_manager([]).hook.register_caches()] == [
        builtin
    ]
    batches = manager_with(TestPlugin()).hook.register_caches()
    assert sorted(impl.name for batch in batches for impl in batch) == sorted([*builtin, "ttl-test"])


def test_hook_register_checkpointers_returns_named_checkpointers():
    builtin = ["blocking", "lazy-async", "memory-snapshot"]
    batches = manager.make_manager([]).hook.register_checkpointers()
    assert [[impl.name for impl in batch] for batch in batches] == [builtin]
    batches = manager_with(TestPlugin()).hook.register_checkpointers()
    assert sorted(impl.name for batch in batches for impl in batch) == sorted([*builtin, "blocking-test"])
    assert {impl.kind for batch in batches for impl in batch} == {"checkpointer"}


def test_hook_register_powercaps_returns_named_powercaps():
    builtin = manager.make_manager([]).hook.register_powercaps()
    assert [[impl.name for impl in batch] for batch in builtin] == [["none", "static", "polca"]]
    batches = manager_with(TestPlugin(), WrongKind()).hook.register_powercaps()
    assert sorted(impl.name for batch in batches for impl in batch) == [
        "none",
        "polca",
        "static",
        "static-test",
        "ttl-test",
    ]


def test_hook_event_recorded_is_broadcast_to_every_plugin():
    first, second = TestPlugin(), TestPlugin()
    pm = manager_with(first, second)
    event = {"reason": "Scheduled", "involvedObject": {"kind": "Deployment", "name": "chat"}}
    pm.hook.event_recorded(event=event)
    assert first.seen == [event]
    assert second.seen == [event]


def test_hook_event_recorded_sees_events_the_control_plane_records_after_commit(
    plugin_module, db, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        events.record(("Deployment", "chat"), "Scheduled", "placed 1 replicas", source="test")
        assert plugin_module.plugin.seen == []  # not before commit
    (seen,) = plugin_module.plugin.seen
    assert seen["reason"] == "Scheduled"
    assert seen["involvedObject"]["name"] == "chat"
    assert seen["count"] == 1


def test_a_failing_event_observer_never_breaks_the_control_plane(
    monkeypatch, db, django_capture_on_commit_callbacks
):
    class Broken:
        @hookimpl
        def event_recorded(self, event):
            raise RuntimeError("observer bug")

    module = types.ModuleType("flotilla_broken_plugin")
    module.event_recorded = Broken().event_recorded  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setenv("FLOTILLA_PLUGIN_MODULES", module.__name__)
    manager.reset()
    with django_capture_on_commit_callbacks(execute=True):
        event = events.record(("Deployment", "chat"), "Scheduled", "placed", source="test")
    assert event.pk is not None


# --- datasette-style checks on the hook specs ---------------------------------------


def test_hookspecs_declare_the_four_kinds_and_the_observer():
    assert set(HOOKS) >= {
        "register_schedulers",
        "register_caches",
        "register_checkpointers",
        "register_powercaps",
        "event_recorded",
    }
    assert {info.hook for info in PLUGIN_KIND_TABLE.values()} <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hookspec_has_a_one_line_docstring(hook):
    doc = getattr(hookspecs, hook).__doc__
    assert doc, f"{hook} has no docstring"
    assert "\n" not in doc.strip(), f"{hook}'s docstring is more than one line"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hookspec_takes_only_keyword_friendly_plain_arguments(hook):
    parameters = inspect.signature(getattr(hookspecs, hook)).parameters.values()
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in parameters)


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hookspec_is_documented(hook):
    """As datasette's test does: a heading with the hook's name and its argument names, so
    a hook that gains, loses or renames an argument fails until its documentation follows."""
    assert DOCS.exists(), "docs/plugins.md is missing: document every hook there"
    text = DOCS.read_text()
    function = getattr(hookspecs, hook)
    call = f"{hook}({', '.join(inspect.signature(function).parameters)})"
    headings = re.findall(r"^#+\s+`?(.+?)`?\s*$", text, re.MULTILINE)
    assert call in headings, f"docs/plugins.md has no heading `## {call}`"
    assert f"def {call}:" in text, f"docs/plugins.md does not quote the hookspec of {hook}"
    assert function.__doc__ in text, f"docs/plugins.md quotes an old docstring of {hook}"


def _protocol_methods() -> list[tuple[str, Any]]:
    """Every method each Protocol in plugins/types.py declares itself."""
    protocols = [
        value
        for value in vars(plugin_types).values()
        if isinstance(value, type)
        and value.__module__ == plugin_types.__name__
        and getattr(value, "_is_protocol", False)
    ]
    return [
        (f"{protocol.__name__}.{name}", method)
        for protocol in protocols
        for name, method in vars(protocol).items()
        if inspect.isfunction(method) and not name.startswith("_")
    ]


def _written_signature(method: Any) -> str:
    """``def name(self, *, a: T, b: U = default) -> R`` with the annotations as the source spells them."""
    signature = inspect.signature(method)  # annotations stay strings (from __future__ import annotations)
    parts: list[str] = []
    for parameter in signature.parameters.values():
        if parameter.kind is parameter.KEYWORD_ONLY and "*" not in parts:
            parts.append("*")
        part = parameter.name
        if parameter.annotation is not parameter.empty:
            part += f": {parameter.annotation}"
        if parameter.default is not parameter.empty:
            part += f" = {parameter.default!r}"
        parts.append(part)
    returns = "" if signature.return_annotation is signature.empty else f" -> {signature.return_annotation}"
    return f"def {method.__name__}({', '.join(parts)}){returns}"


def test_every_kind_has_a_protocol_with_methods():
    documented = {name.partition(".")[0] for name, _ in _protocol_methods()}
    for info in PLUGIN_KIND_TABLE.values():
        assert info.protocol.__name__ in documented, f"{info.kind}'s protocol declares no method"


@pytest.mark.parametrize(("name", "method"), _protocol_methods(), ids=[n for n, _ in _protocol_methods()])
def test_every_protocol_method_is_documented_with_its_signature(name, method):
    text = DOCS.read_text()
    protocol = name.partition(".")[0]
    assert f"`{protocol}`" in text, f"docs/plugins.md does not name the {protocol} protocol"
    assert _written_signature(method) in text, f"docs/plugins.md lacks `{_written_signature(method)}`"


def _source_without_the_checks() -> str:
    """Every test file's text, minus the check below, so it cannot count as its own test."""
    check = inspect.getsource(test_every_hookspec_has_a_test) + inspect.getsource(_source_without_the_checks)
    texts = [path.read_text() for path in sorted(TESTS.rglob("*.py"))]
    return "\n".join(texts).replace(check, "")


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hookspec_has_a_test(hook):
    called = re.search(rf"\.hook\.{hook}\(", _source_without_the_checks())
    assert called, f"no test calls manager.hook.{hook}(...)"
