"""The one table of plugin kinds, and everything that reads it: the spec models, the
registry, the policy rules (who names a Policy, what a name resolves to) and the Protocols.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, get_args

import pytest
from pydantic import BaseModel

from common.problems import Problem
from common.specs import KINDS, PolicySpec
from controlplane import policies, store
from controlplane.http import endpoint
from plugins import binpack, hookspecs, manager
from plugins.types import (
    PLUGIN_KIND_TABLE,
    PLUGIN_KINDS,
    CachedBlock,
    CachePolicy,
    Checkpointer,
    CheckpointHandle,
    CheckpointTarget,
    FinishedSave,
    GpuPower,
    NoParams,
    Plugin,
    PluginKind,
    PowerBudget,
    PowerCap,
    PowerDecision,
    ReplicaLoad,
    RouteRequest,
    Scheduler,
    Selector,
    SessionTurn,
    TrainingState,
    default_plugin,
    selectors,
)
from tests.conftest import Api
from tests.test_api import error_of

# --- the table and the spec models ---------------------------------------------------


def test_the_table_lists_the_kinds_the_type_names():
    assert PLUGIN_KINDS == get_args(PluginKind)
    assert get_args(PolicySpec.model_fields["type"].annotation) == PLUGIN_KINDS
    assert all(info.kind == kind for kind, info in PLUGIN_KIND_TABLE.items())


def test_every_kind_is_registered_by_a_hookspec_and_has_a_registry_entry():
    for info in PLUGIN_KIND_TABLE.values():
        assert hasattr(getattr(hookspecs, info.hook), "flotilla_spec"), info.hook
    assert set(manager.registry()) == set(PLUGIN_KIND_TABLE)


def _field_at(model: type[BaseModel], parts: list[str]) -> Any:
    """The FieldInfo at ``parts`` below ``model``, or None where the path leaves the models."""
    for index, part in enumerate(parts):
        info = model.model_fields.get(part)
        if info is None:
            return None
        if index == len(parts) - 1:
            return info
        model = info.annotation  # type: ignore[assignment]
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
    return None


def _policy_name_fields(model: type[BaseModel], prefix: str) -> set[str]:
    """Every field that names a Policy: those of a ``policies`` part, and any ``policy``."""
    found = set()
    for name, info in model.model_fields.items():
        path = f"{prefix}.{name}"
        if path.rsplit(".", 2)[-2] == "policies" or name == "policy":
            found.add(path)
        candidates = [info.annotation, *get_args(info.annotation)]
        for candidate in candidates:
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                found |= _policy_name_fields(candidate, path)
    return found


@pytest.mark.parametrize(("kind", "selector"), selectors(), ids=lambda v: getattr(v, "path", v))
def test_every_selector_path_exists_in_its_owners_spec_model(kind, selector):
    assert selector.owner in KINDS, f"{kind} is selected on an unknown kind {selector.owner}"
    top, *parts = selector.path.split(".")
    assert top == "spec"
    info = _field_at(KINDS[selector.owner].spec_model, parts)
    assert info is not None, f"{selector.owner} has no field {selector.path}"
    assert info.default is None, f"{selector.owner}.{selector.path} must be optional"


def test_every_policy_name_field_of_the_spec_models_is_in_the_table():
    in_models = {
        (kind, path) for kind, info in KINDS.items() for path in _policy_name_fields(info.spec_model, "spec")
    }
    in_table = {(selector.owner, selector.path) for _, selector in selectors()}
    assert in_models == in_table


def test_a_policy_name_field_holds_a_dns_label():
    with pytest.raises(ValueError, match="DNS-1123"):
        KINDS["TrainingJob"].spec_model.model_validate(
            {
                "model": {"source": "builtin:x"},
                "data": {"source": "builtin:y"},
                "steps": 1,
                "checkpoint": {"policy": "Bad_Name"},
            }
        )


def test_a_selector_reads_a_name_from_any_shape_of_stored_spec():
    selector = Selector("TrainingJob", "spec.checkpoint.policy")
    assert selector.read({"checkpoint": {"policy": "fast"}}) == "fast"
    assert selector.read({"checkpoint": None}) is None
    assert selector.read({"checkpoint": {"policy": ""}}) is None
    assert selector.read({}) is None


def test_only_the_scheduler_has_a_default():
    assert {kind: default_plugin(kind) for kind in PLUGIN_KINDS} == {
        "scheduler": "binpack",
        "cache": None,
        "checkpointer": None,
        "powercap": None,
    }
    assert default_plugin("no-such-kind") is None


# --- the Protocols ---------------------------------------------------------------------


class Lru:
    name: ClassVar[str] = "lru-test"
    kind: ClassVar[str] = "cache"
    description: ClassVar[str] = "Least recently used."
    Params: ClassVar[type[BaseModel]] = NoParams

    def reuses_prefixes(self, *, params: BaseModel) -> bool:
        return True

    def evict(
        self, *, blocks: list[CachedBlock], needed: int, now: float, total_blocks: int, params: BaseModel
    ) -> list[int]:
        free = sorted(
            (b for b in blocks if b.ref_count == 0 and b.pinned_until <= now), key=lambda b: b.last_used
        )
        return [b.block_id for b in free[:needed]]

    def pin_seconds(self, *, turn: SessionTurn, params: BaseModel) -> float:
        return max(turn.gaps, default=0.0)

    def route(self, *, request: RouteRequest, replicas: list[ReplicaLoad], params: BaseModel) -> str:
        return max(replicas, key=lambda r: len(r.cached_hashes & set(request.block_hashes))).name


@dataclass
class Memory:
    name: ClassVar[str] = "memory-test"
    kind: ClassVar[str] = "checkpointer"
    description: ClassVar[str] = "Keeps the last state in memory, by owner."
    Params: ClassVar[type[BaseModel]] = NoParams
    kept: dict[str, TrainingState] = field(default_factory=dict)

    def save(self, *, state: TrainingState, target: CheckpointTarget, params: BaseModel) -> CheckpointHandle:
        self.kept[target.owner] = state
        return FinishedSave(state.step)

    def restore(self, *, target: CheckpointTarget, params: BaseModel) -> TrainingState | None:
        return self.kept.get(target.owner)


class Even:
    name: ClassVar[str] = "even-test"
    kind: ClassVar[str] = "powercap"
    description: ClassVar[str] = "An even share."
    Params: ClassVar[type[BaseModel]] = NoParams

    def decide(self, *, budget: PowerBudget, gpus: list[GpuPower], params: BaseModel) -> PowerDecision:
        share = budget.watts / len(gpus)
        return PowerDecision(
            {(g.node, g.index): max(g.min_watts, share) for g in gpus}, [f"{share:g} W each"]
        )


def test_each_kinds_protocol_is_checkable_and_a_plugin():
    for info in PLUGIN_KIND_TABLE.values():
        assert Plugin in info.protocol.__mro__
    assert isinstance(binpack.Binpack(), Scheduler)
    assert isinstance(Lru(), CachePolicy) and not isinstance(Lru(), PowerCap)
    assert isinstance(Memory(), Checkpointer)
    assert isinstance(Even(), PowerCap)


def test_a_cache_policy_evicts_routes_and_pins_with_plain_data():
    lru = Lru()
    blocks = [
        CachedBlock(block_id=0, hash=10, last_used=5.0),
        CachedBlock(block_id=1, hash=11, last_used=1.0, ref_count=1),
        CachedBlock(block_id=2, hash=12, last_used=2.0, pinned_until=99.0, session="s"),
        CachedBlock(block_id=3, hash=None, last_used=3.0),
    ]
    assert lru.evict(blocks=blocks, needed=2, now=10.0, total_blocks=8, params=NoParams()) == [3, 0]
    turn = SessionTurn(session="s", blocks=[2], gaps=[4.0, 7.5], memory_in_use=0.4)
    assert lru.pin_seconds(turn=turn, params=NoParams()) == 7.5
    replicas = [
        ReplicaLoad(name="a", url="http://a", cached_hashes=frozenset({10})),
        ReplicaLoad(name="b", url="http://b", queued=3, cached_hashes=frozenset({10, 11})),
    ]
    request = RouteRequest(block_hashes=[10, 11], session="s")
    assert lru.route(request=request, replicas=replicas, params=NoParams()) == "b"


def test_a_blocking_checkpointer_hands_back_a_finished_handle():
    memory, target = Memory(), CheckpointTarget(owner="TrainingJob/pretrain", local_dir="/tmp/ckpt")
    assert memory.restore(target=target, params=NoParams()) is None
    state = TrainingState(step=7, model={"w": [1.0]}, data={"position": 896})
    handle = memory.save(state=state, target=target, params=NoParams())
    assert isinstance(handle, CheckpointHandle)
    assert (handle.step, handle.done) == (7, True)
    handle.before_update()
    assert handle.wait(timeout=0) is True
    assert memory.restore(target=target, params=NoParams()) is state


def test_a_power_cap_decides_limits_by_node_and_index():
    gpus = [
        GpuPower("gpu-a", i, "H100", 400.0, 700.0, 200.0, 700.0, owner="Deployment/chat") for i in range(2)
    ]
    decision = Even().decide(budget=PowerBudget(cluster="local", watts=1000.0), gpus=gpus, params=NoParams())
    assert decision.limits == {("gpu-a", 0): 500.0, ("gpu-a", 1): 500.0}
    assert decision.notes == ["500 W each"]
    assert PowerDecision().limits == {}  # nothing to change


# --- the policy rules ------------------------------------------------------------------


def test_users_are_read_from_every_selector_of_the_table(db):
    store.create("Policy", "ckpt", {"type": "checkpointer", "plugin": "gone", "params": {}})
    store.create(
        "TrainingJob",
        "pretrain",
        {"checkpoint": {"policy": "ckpt"}, "policies": {"scheduler": "binpack"}},
    )
    store.create("Deployment", "chat", {"policies": {"scheduler": "binpack", "cache": "lru"}})
    store.create("Cluster", "local", {"policies": {"powercap": "even", "scheduler": None}})
    assert policies.users_by_name() == {
        "binpack": ["deployment/chat", "trainingjob/pretrain"],
        "ckpt": ["trainingjob/pretrain"],
        "even": ["cluster/local"],
        "lru": ["deployment/chat"],
    }
    assert policies.users_of("ckpt") == ["trainingjob/pretrain"]
    assert policies.users_of("nobody") == []


def test_a_policy_named_only_by_a_checkpoint_cannot_be_deleted(db, operator: Api):
    store.create("Policy", "ckpt", {"type": "checkpointer", "plugin": "gone", "params": {}})
    store.create("TrainingJob", "pretrain", {"checkpoint": {"policy": "ckpt"}})
    error = error_of(operator.delete("/policies/ckpt"), 409)
    assert error["message"] == "policy/ckpt is used by trainingjob/pretrain"


def test_references_lists_each_named_field_with_its_kind():
    spec = {"policies": {"scheduler": "spread"}, "checkpoint": {"policy": "fast", "everySteps": 5}}
    assert policies.references("TrainingJob", spec) == [
        ("spec.policies.scheduler", "scheduler", "spread"),
        ("spec.checkpoint.policy", "checkpointer", "fast"),
    ]
    assert policies.references("Node", spec) == []


def test_plugin_for_validates_a_policy_spec_the_same_way_everywhere():
    impl, params = policies.plugin_for({"type": "scheduler", "plugin": "binpack", "params": {"spread": True}})
    assert impl.name == "binpack" and params.spread is True  # type: ignore[attr-defined]
    with pytest.raises(manager.PluginError) as excinfo:
        policies.plugin_for({"type": "scheduler", "plugin": "binpack", "params": {"sprad": True}})
    assert [d["field"] for d in excinfo.value.details()] == ["spec.params.sprad"]


def test_resolve_falls_back_to_the_kinds_default_and_refuses_a_kind_without_one(db):
    impl, _ = policies.resolve("scheduler", None)
    assert impl.name == "binpack"
    with pytest.raises(policies.PolicyProblem, match="no cache policy is set"):
        policies.resolve("cache", None)


# --- HTTP helpers ----------------------------------------------------------------------


def test_a_problem_escaping_a_view_answers_422_with_its_details(rf, token_for):
    @endpoint({"GET": "viewer"})
    def view(request):
        raise Problem("the thing is wrong", field="spec.thing", fix="change the thing")

    response = view(rf.get("/x", HTTP_AUTHORIZATION=f"Bearer {token_for('viewer')}"))
    assert response.status_code == 422
    error = json.loads(response.content)["error"]
    assert error == {
        "code": "Invalid",
        "message": "the thing is wrong",
        "details": [{"field": "spec.thing", "message": "the thing is wrong", "fix": "change the thing"}],
    }
