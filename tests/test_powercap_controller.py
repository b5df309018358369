"""The power-cap controller, called directly: telemetry and owners in, Node limits, Cluster
status, conditions, events and the scheduler's gate out. The plugins are the real ones
(plugins/powercaps.py); telemetry is written with the store the heartbeat uses."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from common.timeutil import now
from controlplane import power, store
from controlplane.apply import apply
from controlplane.conditions import get_condition
from controlplane.controllers import owners, powercap
from controlplane.errors import Invalid
from controlplane.models import Event, Resource
from controlplane.telemetry import store as telemetry_store
from tests.conftest import deployment

pytestmark = pytest.mark.django_db
API = "flotilla.dev/v1"
H100_RANGE = [210.0, 700.0]


def cluster(
    name: str = "row-a", budget: float | None = 2000.0, policy: str | None = "polca"
) -> dict[str, Any]:
    spec: dict[str, Any] = {"policies": {"powercap": policy} if policy else {}}
    if budget is not None:
        spec["powerBudgetWatts"] = budget
    return {"apiVersion": API, "kind": "Cluster", "metadata": {"name": name}, "spec": spec}


def training_job(name: str, gpus: int = 1, **spec: Any) -> dict[str, Any]:
    body = {"model": {"source": "builtin:tiny-llama"}, "data": {"source": "builtin:tiny-shakespeare"},
            "steps": 100, "resources": {"gpusPerReplica": gpus}, **spec}  # fmt: skip
    return {"apiVersion": API, "kind": "TrainingJob", "metadata": {"name": name}, "spec": body}


def register(name: str, gpus: int = 4, cluster_name: str = "row-a", ranged: bool = True) -> None:
    from controlplane.controllers import nodes

    devices = [
        {
            "index": i,
            "type": "H100",
            "memoryMiB": 81559,
            "healthy": True,
            "powerLimitW": 700.0,
            **({"powerLimitRangeW": H100_RANGE} if ranged else {}),
        }  # fmt: skip
        for i in range(gpus)
    ]
    nodes.register(name, cluster=cluster_name, labels={}, devices=devices, info={})


def sample(node: str, draws: list[float], age_s: float = 0.0, limits: list[float] | None = None) -> None:
    devices = [
        {"index": i, "powerW": w, "powerLimitW": (limits or [700.0] * len(draws))[i], "utilization": 90.0}
        for i, w in enumerate(draws)
    ]
    telemetry_store.record(node, {"devices": devices}, at=now() - timedelta(seconds=age_s))


def status_power(name: str = "row-a") -> dict[str, Any]:
    return store.get("Cluster", name).status.get("power") or {}


def condition(name: str = "row-a") -> dict[str, Any]:
    found = get_condition(store.get("Cluster", name).status, powercap.CONDITION)
    assert found is not None
    return found


def desired(node: str) -> dict[str, float | None]:
    return power.desired_limits(store.get("Node", node).status)


def reasons(name: str = "row-a") -> list[str]:
    return list(
        Event.objects.filter(kind="Cluster", name=name).order_by("id").values_list("reason", flat=True)
    )


def place(*documents: dict[str, Any]) -> None:
    apply(list(documents), actor="test")
    for document in documents:
        if document["kind"] in ("Deployment", "TrainingJob"):
            owners.reconcile(document["kind"], document["metadata"]["name"])


# --- reading the fleet ------------------------------------------------------------------------


def test_gpus_carry_their_owners_priority_and_stale_nodes_count_at_their_limit():
    apply([cluster()], actor="test")
    register("n1", gpus=2)
    register("n2", gpus=2)
    place(
        training_job("pretrain", priority="batch"),
        deployment("chat", replicas=1, cluster="row-a", priority="critical"),
    )
    sample("n1", [650.0, 600.0])
    sample("n2", [100.0, 120.0], age_s=3600)  # an hour old: stale
    gpus, stale = powercap.read_gpus("row-a")
    by_key = {(g.node, g.index): g for g in gpus}
    owners_of = {g.owner: g.priority for g in gpus if g.owner}
    assert owners_of == {"TrainingJob/pretrain": 10, "Deployment/chat": 100}
    assert stale == ["n2"]
    assert by_key[("n2", 0)].draw_watts == 700.0 and by_key[("n2", 0)].stale  # its limit, not 100 W
    assert by_key[("n1", 0)].draw_watts == 650.0 and not by_key[("n1", 0)].stale
    assert all((g.min_watts, g.max_watts) == (210.0, 700.0) for g in gpus)
    idle = [g for g in gpus if g.owner is None]
    assert idle and all(g.priority == 0 for g in idle)


def test_a_board_without_a_reported_range_is_not_capped_below_half_its_default():
    apply([cluster(budget=100.0, policy="static")], actor="test")
    register("n1", gpus=2, ranged=False)
    sample("n1", [500.0, 500.0])
    powercap.reconcile("row-a")
    # static asks for 50 W each; the unknown board's floor is half of 700 W
    assert desired("n1") == {"0": 350.0, "1": 350.0}


# --- deciding and writing ------------------------------------------------------------------------


def test_static_caps_every_gpu_at_its_share_and_the_status_says_so():
    apply([cluster(budget=2000.0, policy="static")], actor="test")
    register("n1", gpus=4)
    sample("n1", [600.0, 600.0, 300.0, 100.0])
    powercap.reconcile("row-a")
    assert desired("n1") == {"0": 500.0, "1": 500.0, "2": 500.0, "3": 500.0}
    assert store.get("Node", "n1").status["power"]["desiredBy"] == "powercap/static"
    summary = status_power()
    assert summary["budgetWatts"] == 2000.0 and summary["drawWatts"] == 1600.0
    assert summary["headroomWatts"] == 400.0 and summary["cappedGpus"] == 4 and summary["capWatts"] == 800.0
    assert summary["shortfallWatts"] == 0 and summary["policy"] == "static"
    assert condition()["status"] == "True" and condition()["reason"] == "WithinBudget"
    assert "PowerCapsApplied" in reasons()


def test_polca_caps_batch_work_before_serving_and_lifts_it_when_the_draw_falls():
    apply([cluster(budget=2000.0, policy="polca")], actor="test")
    register("n1", gpus=4)
    place(
        training_job("pretrain", gpus=2, priority="batch"),
        deployment("chat", replicas=2, cluster="row-a", priority="critical"),
    )
    gpus, _ = powercap.read_gpus("row-a")
    batch = sorted(g.index for g in gpus if g.owner == "TrainingJob/pretrain")
    serving = sorted(g.index for g in gpus if g.owner == "Deployment/chat")
    hot = [0.0] * 4
    for i in batch + serving:
        hot[i] = 500.0  # 2,000 W: at the budget, above the cap threshold
    sample("n1", hot)
    powercap.reconcile("row-a")
    caps = desired("n1")
    assert {int(i) for i, w in caps.items() if w is not None} == set(batch), caps
    assert condition()["status"] == "True"
    assert status_power()["capped"][0]["owner"] == "TrainingJob/pretrain"

    cool = [0.0] * 4
    for i in serving:
        cool[i] = 250.0
    for i in batch:
        cool[i] = 200.0
    for _ in range(20):  # released step by step, highest priority first
        sample("n1", cool, limits=[caps.get(str(i)) or 700.0 for i in range(4)])
        powercap.reconcile("row-a")
        caps = desired("n1")
        if all(w is None for w in caps.values()):
            break
    assert all(w is None for w in caps.values()), caps
    assert status_power()["cappedGpus"] == 0
    assert reasons().count("PowerCapsLifted") >= 1


def test_a_plugin_limit_is_clamped_to_the_boards_range():
    gpus = [
        powercap.GpuPower("n1", 0, "H100", 500.0, 700.0, 210.0, 700.0),
        powercap.GpuPower("n1", 1, "H100", 500.0, 700.0, 210.0, 700.0),
        powercap.GpuPower("n1", 2, "H100", 500.0, 700.0, 210.0, 700.0),
    ]
    decision = powercap.PowerDecision(
        limits={("n1", 0): 50.0, ("n1", 1): 900.0, ("n1", 2): 400.0, ("x", 9): 1.0}
    )
    assert powercap._clamped(decision, gpus) == {("n1", 0): 210.0, ("n1", 1): None, ("n1", 2): 400.0}


def test_a_budget_that_cannot_be_met_says_by_how_much_and_stops_new_placements():
    apply([cluster(budget=500.0, policy="polca")], actor="test")
    register("n1", gpus=4)
    sample("n1", [600.0, 600.0, 600.0, 600.0])  # even at 210 W each: 840 W > 500 W
    powercap.reconcile("row-a")
    found = condition()
    assert found["status"] == "False" and found["reason"] == "BudgetUnmeetable"
    assert status_power()["shortfallWatts"] == 340.0 and "340 W" in found["message"]
    assert "PowerBudgetUnmeetable" in reasons()
    assert all(w == 210.0 for w in desired("n1").values())

    place(deployment("late", replicas=1, cluster="row-a"))
    late = store.get("Deployment", "late")
    assert not Resource.objects.filter(kind="Workload", owner_ref="Deployment/late").exists()
    scheduled = get_condition(late.status, "Scheduled")
    assert scheduled["status"] == "False" and "power budget" in scheduled["message"]

    sample("n1", [100.0, 100.0, 100.0, 100.0])  # the work stopped: headroom again
    powercap.reconcile("row-a")
    assert condition()["reason"] != "BudgetUnmeetable"
    owners.reconcile("Deployment", "late")
    assert Resource.objects.filter(kind="Workload", owner_ref="Deployment/late").exists()


def test_removing_the_budget_lifts_the_caps_and_the_status():
    apply([cluster(budget=1000.0, policy="static")], actor="test")
    register("n1", gpus=2)
    sample("n1", [600.0, 600.0])
    powercap.reconcile("row-a")
    assert desired("n1") == {"0": 500.0, "1": 500.0}
    apply([cluster(budget=None, policy="static")], actor="test")
    assert powercap.reconcile("row-a") is None
    assert desired("n1") == {"0": None, "1": None}
    assert "power" not in store.get("Cluster", "row-a").status
    assert get_condition(store.get("Cluster", "row-a").status, powercap.CONDITION) is None


def test_the_none_policy_observes_and_lifts_what_another_policy_left():
    apply([cluster(budget=1000.0, policy="static")], actor="test")
    register("n1", gpus=2)
    sample("n1", [600.0, 600.0])
    powercap.reconcile("row-a")
    apply([cluster(budget=1000.0, policy="none")], actor="test")
    sample("n1", [500.0, 500.0], limits=[500.0, 500.0])
    powercap.reconcile("row-a")
    assert desired("n1") == {"0": None, "1": None}
    assert status_power()["cappedGpus"] == 0 and status_power()["drawWatts"] == 1000.0


def test_a_cluster_without_telemetry_says_so():
    apply([cluster()], actor="test")
    powercap.reconcile("row-a")
    assert condition()["reason"] == "NoTelemetry"


def test_telemetry_arrival_sends_one_pass_per_interval(settings, monkeypatch):
    sent: list[tuple[str, list]] = []
    from controlplane.celeryapp import app

    monkeypatch.setattr(app, "send_task", lambda name, args=None, **kw: sent.append((name, args)))
    monkeypatch.setattr(powercap, "_capped_read_at", -1e9)
    powercap._sent_here.clear()
    settings.FLOTILLA_POWERCAP_MIN_INTERVAL = 60.0
    apply([cluster()], actor="test")
    register("n1", gpus=1)
    register("other", gpus=1, cluster_name="elsewhere")
    assert powercap.telemetry_arrived("n1") is True
    assert powercap.telemetry_arrived("n1") is False  # within the interval
    assert powercap.telemetry_arrived("other") is False  # its cluster caps nothing
    assert sent == [(powercap.POWERCAP_TASK, ["row-a"])]


def test_priority_is_validated_at_apply_naming_the_field():
    with pytest.raises(Invalid) as caught:
        apply([deployment("chat", priority="urgent")], actor="test")
    assert "spec.priority" in str(caught.value.body())
    with pytest.raises(Invalid):
        apply([training_job("t", priority=101)], actor="test")
    apply([training_job("t", priority=70)], actor="test")
    assert store.get("TrainingJob", "t").spec["priority"] == 70


def test_a_powercap_policy_with_bad_params_is_refused_at_apply_naming_the_field():
    spec = {"type": "powercap", "plugin": "polca", "params": {"releaseThreshold": 0.9}}
    policy = {"apiVersion": API, "kind": "Policy", "metadata": {"name": "polca-odd"}, "spec": spec}
    with pytest.raises(Invalid) as caught:
        apply([policy], actor="test")
    text = str(caught.value.body())
    assert "spec.params.releaseThreshold" in text and "capThreshold" in text, text
    policy["spec"]["params"] = {"capThreshold": 0.8, "stepShare": 0.05}
    apply([policy, cluster(budget=1000.0, policy="polca-odd")], actor="test")
    register("n1", gpus=2)
    sample("n1", [650.0, 650.0])
    assert powercap.reconcile("row-a") is not None
    assert store.get("Node", "n1").status["power"]["desiredBy"] == "powercap/polca"


def test_a_pass_before_the_agent_applied_the_last_caps_does_not_cap_other_work():
    """The beat and telemetry arrival run passes a second apart; an agent applies limits on its
    next heartbeat. Until it does, the draw is what it was: a second pass must not read that
    as its caps failing and cap critical serving too (seen in the end-to-end test)."""
    apply([cluster(budget=1900.0, policy="polca")], actor="test")
    register("n1", gpus=4)
    place(
        training_job("pretrain", gpus=2, priority="batch"),
        deployment("chat", replicas=2, cluster="row-a", priority="critical"),
    )
    gpus, _ = powercap.read_gpus("row-a")
    draws = [406.0 if g.owner == "Deployment/chat" else 630.0 for g in sorted(gpus, key=lambda g: g.index)]
    sample("n1", draws)  # 2,072 W: above 95% of the budget
    for _ in range(3):  # the agent has not applied anything yet
        powercap.reconcile("row-a")
    owners_capped = {c["owner"] for c in status_power()["capped"]}
    assert owners_capped == {"TrainingJob/pretrain"}, status_power()["capped"]
