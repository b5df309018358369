"""The powercap kind's built-ins (none, static, polca) and the helpers the controller shares:
clamping to the board's range, the static split, polca's priority order, its hysteresis band,
releases within the projected budget, the emergency path, the protected floor, stale GPUs,
the shortfall, parameters refused naming the field, and a closed loop over a small fleet.

Plain data in, plain data out: no database, no agents, no real GPU limit anywhere. Every GPU
here is an H100-like board (200-700 W, so polca's default step is 70 W) unless it says not.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from plugins import manager
from plugins.powercaps import minimum_draw, shortfall
from plugins.types import GpuPower, PowerBudget, PowerCap, PowerDecision

PRIORITY = {"idle": 0, "batch": 10, "normal": 50, "critical": 100}
OWNER = {
    "idle": None,
    "batch": "TrainingJob/pretrain",
    "normal": "Deployment/chat",
    "critical": "Deployment/api",
}


def gpu(
    index: int,
    role: str = "batch",
    draw: float = 600.0,
    limit: float = 700.0,
    *,
    node: str = "node-a",
    low: float = 200.0,
    high: float = 700.0,
    stale: bool = False,
) -> GpuPower:
    return GpuPower(
        node=node,
        index=index,
        gpu_type="H100",
        draw_watts=draw,
        limit_watts=limit,
        min_watts=low,
        max_watts=high,
        owner=OWNER[role],
        priority=PRIORITY[role],
        stale=stale,
    )


def fleet(*groups: tuple[int, str, float, float]) -> list[GpuPower]:
    """GPUs in groups of (count, role, draw, limit), numbered in order on one node."""
    gpus: list[GpuPower] = []
    for count, role, draw, limit in groups:
        gpus += [gpu(len(gpus) + i, role, draw, limit) for i in range(count)]
    return gpus


def decide(name: str, watts: float, gpus: list[GpuPower], **params: Any) -> PowerDecision:
    plugin = manager.get("powercap", name)
    validated = manager.validate_params(plugin, params)
    return plugin.decide(budget=PowerBudget("local", watts), gpus=gpus, params=validated)  # type: ignore[attr-defined]


def roles_capped(decision: PowerDecision, gpus: list[GpuPower]) -> set[str]:
    role_of = {(g.node, g.index): next(r for r, p in PRIORITY.items() if p == g.priority) for g in gpus}
    return {role_of[key] for key in decision.limits}


def projected(decision: PowerDecision, gpus: list[GpuPower]) -> float:
    """The draw once the decision's caps apply (a GPU draws at most its cap)."""
    total = 0.0
    for g in gpus:
        cap = decision.limits.get((g.node, g.index), g.limit_watts)
        total += min(g.limit_watts if g.stale else g.draw_watts, g.max_watts if cap is None else cap)
    return total


# --- the registry ------------------------------------------------------------------------------


def test_the_registry_lists_the_three_powercaps_with_their_parameters():
    registry = manager.registry()["powercap"]
    described = {item["name"]: item for item in manager.describe() if item["kind"] == "powercap"}

    assert set(registry) == set(described) == {"none", "static", "polca"}
    assert all(isinstance(impl, PowerCap) for impl in registry.values())
    polca = described["polca"]["paramsSchema"]["properties"]
    assert set(polca) == {
        "capThreshold",
        "emergencyThreshold",
        "releaseThreshold",
        "stepShare",
        "protectPriority",
        "protectedFloorShare",
        "floorShare",
    }
    assert all(field.get("description") for field in polca.values())
    assert described["static"]["paramsSchema"]["properties"]["reserveShare"]["description"]


# --- none and static ---------------------------------------------------------------------------


def test_none_lifts_only_the_caps_a_previous_policy_left_and_reports_the_draw():
    gpus = fleet((2, "batch", 650, 700), (1, "batch", 300, 300))

    decision = decide("none", 1000, gpus)

    assert decision.limits == {("node-a", 2): None}
    assert decision.notes[0] == "draw 1,600 W of 1,000 W budget (160%)"
    assert "over budget by 600 W" in decision.notes[1]


def test_static_gives_every_gpu_an_even_share_of_the_budget_less_the_reserve():
    gpus = fleet((2, "critical", 100, 700), (2, "batch", 650, 700))

    decision = decide("static", 2000, gpus, reserveShare=0.2)

    assert decision.limits == {("node-a", i): 400.0 for i in range(4)}


def test_static_clamps_each_share_to_its_boards_range():
    gpus = [gpu(0), gpu(1, low=40, high=72, draw=60, limit=72)]

    starved = decide("static", 300, gpus).limits
    plenty = decide("static", 10_000, gpus).limits

    assert starved == {("node-a", 0): 200.0, ("node-a", 1): 72.0}
    assert plenty == {("node-a", 0): 700.0, ("node-a", 1): 72.0}


# --- polca: capping in priority order ----------------------------------------------------------


def test_polca_caps_batch_before_normal_and_never_critical_below_the_emergency_threshold():
    budget = 9000  # 12 x 650 W = 7,800 W: 87% of the budget, between cap and emergency thresholds

    first = decide(
        "polca", budget, fleet((4, "batch", 650, 700), (4, "normal", 650, 700), (4, "critical", 650, 700))
    )
    batch_floored = fleet((4, "batch", 200, 200), (4, "normal", 650, 700), (4, "critical", 700, 700))
    second = decide("polca", 7100, batch_floored)  # 6,200 W: 87%
    all_floored = fleet((4, "batch", 200, 200), (4, "normal", 200, 200), (4, "critical", 700, 700))
    third = decide("polca", 5050, all_floored)  # 4,400 W: 87%

    assert first.limits == {("node-a", i): 580 for i in range(4)}  # one 70 W step below the draw
    assert first.notes == ["draw 7,800 W > 85% of 9,000 W: capped 4 batch GPUs one step to 580 W"]
    assert roles_capped(second, batch_floored) == {"normal"}
    assert third.limits == {}
    assert "every unprotected GPU is at its floor" in third.notes[0]


def test_polca_caps_an_idle_gpu_drawing_power_before_any_owned_one():
    gpus = fleet((1, "idle", 400, 700), (3, "batch", 650, 700))  # 2,350 W

    decision = decide("polca", 2700, gpus)  # 87%

    assert decision.limits == {("node-a", 0): 330}


@pytest.mark.parametrize("share", [0.75, 0.8, 0.85])
def test_polca_holds_its_caps_anywhere_in_the_hysteresis_band(share):
    gpus = fleet((4, "batch", 420, 420), (4, "normal", 500, 700))  # 3,680 W

    decision = decide("polca", 3680 / share, gpus)

    assert decision == PowerDecision()


# --- polca: release ----------------------------------------------------------------------------


def test_polca_releases_highest_priority_first_and_only_within_the_projected_budget():
    capped = fleet(
        (1, "batch", 350, 350),
        (1, "critical", 400, 400),
        (2, "normal", 350, 350),
        (1, "critical", 210, 210),
    )
    busy = sum(g.draw_watts for g in capped)
    gpus = capped + [gpu(5 + i, "critical", (7400 - busy) / 10) for i in range(10)]  # 7,400 W

    # The worst case may grow by 8,500 - 7,400 = 1,100 W; steps are half a board (350 W).
    decision = decide("polca", 10_000, gpus, stepShare=0.5)

    assert decision.limits == {
        ("node-a", 4): 560,  # the most capped critical GPU first: 210 -> 560
        ("node-a", 1): None,  # 400 + 350 reaches the board's maximum: lifted (+300 W)
        ("node-a", 2): None,  # then the first normal one (+350 W, 1,000 W in all)
    }
    assert decision.notes == [
        "draw 7,400 W < 75% of 10,000 W: raised 1 caps one step, lifted 2 (worst case 8,400 W)"
    ]


def test_polca_raises_no_lower_priority_cap_while_a_higher_one_does_not_fit():
    gpus = fleet((1, "critical", 350, 350), (1, "batch", 650, 650), (9, "normal", 6150 / 9, 700))  # 7,150 W

    # 74% of 9,600 W: a release, but the critical GPU's 350 W step would pass 77% (7,392 W);
    # the batch GPU's 50 W would fit, and still waits its turn.
    decision = decide("polca", 9600, gpus, stepShare=0.5, capThreshold=0.77)

    assert decision == PowerDecision()


# --- polca: emergency ---------------------------------------------------------------------------


def test_polca_emergency_caps_batch_just_enough_to_bring_the_draw_to_the_cap_threshold():
    gpus = fleet((8, "batch", 700, 700), (8, "critical", 650, 700))  # 10,800 W

    decision = decide("polca", 10_000, gpus)

    assert decision.limits == {("node-a", i): 412 for i in range(8)}  # 8 x 413 + 5,200 > 8,500
    assert projected(decision, gpus) == 8496
    assert decision.notes == ["draw 10,800 W > 95% of 10,000 W: capped 8 batch GPUs to 412 W"]


def test_polca_emergency_holds_critical_gpus_at_their_protected_floor_while_that_is_enough():
    gpus = fleet((4, "batch", 700, 700), (8, "critical", 700, 700))  # 8,400 W

    decision = decide("polca", 6000, gpus)

    assert [decision.limits[("node-a", i)] for i in range(4)] == [200] * 4
    assert [decision.limits[("node-a", i)] for i in range(4, 12)] == [537] * 8  # 800 + 8 x 537 <= 5,100
    assert len(decision.notes) == 2 and "8 critical GPUs to 537 W" in decision.notes[1]


def test_polca_goes_below_the_protected_floor_only_as_far_as_the_budget_needs():
    gpus = fleet((4, "batch", 700, 700), (8, "critical", 700, 700))

    decision = decide("polca", 4000, gpus)  # 800 + 8 x 490 = 4,720 W: over even at the floor

    assert [decision.limits[("node-a", i)] for i in range(4, 12)] == [400] * 8  # 800 + 3,200 = budget
    assert projected(decision, gpus) <= 4000


def test_polca_never_caps_below_the_boards_minimum_and_says_when_the_budget_is_unmeetable():
    gpus = fleet((4, "batch", 700, 700), (8, "critical", 700, 700))

    decision = decide("polca", 2000, gpus)

    assert set(decision.limits.values()) == {200}
    assert len(decision.limits) == 12
    assert "budget unmeetable" in decision.notes[-1] and "short 400 W" in decision.notes[-1]
    assert shortfall(PowerBudget("local", 2000), gpus) == 400


def test_polca_keeps_unprotected_gpus_at_their_floor_share_and_caps_protected_ones_instead():
    gpus = fleet((4, "batch", 700, 700), (4, "critical", 700, 700))  # 5,600 W

    decision = decide("polca", 4500, gpus, floorShare=0.5)  # target 3,825 W; batch at 350 W: 4,200

    assert [decision.limits[("node-a", i)] for i in range(8)] == [350] * 4 + [606] * 4


# --- stale telemetry and the shortfall ---------------------------------------------------------


def test_a_stale_gpu_counts_at_its_limit_not_at_the_draw_it_last_reported():
    quiet = fleet((6, "normal", 600, 700)) + [gpu(6, "batch", draw=0, limit=700)]  # 3,600 W: 72%
    stale = [*quiet[:-1], gpu(6, "batch", draw=0, limit=700, stale=True)]  # 4,300 W: 86%

    assert decide("polca", 5000, quiet).limits == {}
    assert decide("polca", 5000, stale).limits == {("node-a", 6): 630}
    assert minimum_draw(stale) == 7 * 200


def test_minimum_draw_counts_gpus_below_their_minimum_at_their_draw():
    gpus = [gpu(0, draw=650), gpu(1, "idle", draw=60), gpu(2, draw=100, limit=300, stale=True)]

    assert minimum_draw(gpus) == 200 + 60 + 200
    assert shortfall(PowerBudget("local", 400), gpus) == 60
    assert shortfall(PowerBudget("local", 1000), gpus) == 0


# --- parameters ----------------------------------------------------------------------------------

BAD_PARAMS = {
    "cap below release": ("polca", {"capThreshold": 0.7}, "capThreshold"),
    "release above cap": ("polca", {"releaseThreshold": 0.9}, "releaseThreshold"),
    "emergency below cap": ("polca", {"emergencyThreshold": 0.8}, "emergencyThreshold"),
    "both set, equal": ("polca", {"capThreshold": 0.9, "emergencyThreshold": 0.9}, "emergencyThreshold"),
    "emergency above 1": ("polca", {"emergencyThreshold": 1.2}, "emergencyThreshold"),
    "step 0": ("polca", {"stepShare": 0}, "stepShare"),
    "protect everything": ("polca", {"protectPriority": 0}, "protectPriority"),
    "floor above protected": ("polca", {"floorShare": 0.8}, "floorShare"),
    "unknown field": ("polca", {"colour": "red"}, "colour"),
    "half in reserve": ("static", {"reserveShare": 0.5}, "reserveShare"),
    "none takes none": ("none", {"reserveShare": 0.1}, "reserveShare"),
}


@pytest.mark.parametrize("case", BAD_PARAMS, ids=list(BAD_PARAMS))
def test_validate_params_refuses_bad_parameters_naming_the_field(case):
    name, params, field = BAD_PARAMS[case]

    with pytest.raises(manager.PluginError) as excinfo:
        manager.validate_params(manager.get("powercap", name), params)

    assert [e["field"] for e in excinfo.value.errors] == [f"spec.params.{field}"]


def test_an_out_of_order_threshold_is_explained_with_both_values():
    with pytest.raises(manager.PluginError) as excinfo:
        manager.validate_params(manager.get("powercap", "polca"), {"releaseThreshold": 0.9})

    assert excinfo.value.errors[0]["message"] == "releaseThreshold (0.9) must be below capThreshold (0.85)"


def test_validate_params_accepts_good_parameters_and_fills_defaults():
    params = manager.validate_params(manager.get("powercap", "polca"), {"capThreshold": 0.9})

    assert params.model_dump() == {
        "capThreshold": 0.9,
        "emergencyThreshold": 0.95,
        "releaseThreshold": 0.75,
        "stepShare": 0.1,
        "protectPriority": 100,
        "protectedFloorShare": 0.7,
        "floorShare": 0.0,
    }


# --- the closed loop ----------------------------------------------------------------------------


def ramp(tick: int, start: int, rise: int, hold: int, fall: int, low: float, high: float) -> float:
    """Demand that rises from ``low`` to ``high`` over ``rise`` ticks, holds, then falls back."""
    t = tick - start
    if t < 0 or t >= rise + hold + fall:
        return low
    if t < rise:
        return low + (high - low) * t / rise
    if t < rise + hold:
        return high
    return high - (high - low) * (t - rise - hold) / fall


@pytest.mark.parametrize("seed", [1, 2, 6])  # 2 and 6 pass the budget once, at the training start
def test_polca_keeps_a_simulated_fleet_within_budget_and_lifts_every_cap_when_demand_falls(seed):
    """Twelve GPUs, draw = min(demand, limit); each decision takes effect at the next tick, as
    the agent applies it on its next heartbeat. Serving demand ramps up and down with noise and
    a training job starts abruptly mid-ramp: the draw may pass the budget for one decision at
    most, the batch GPUs are capped first, critical ones never, no cap goes down again once it
    has started to rise (no oscillation), and every cap is gone at the end."""
    rng = random.Random(seed)
    roles = ["batch"] * 4 + ["normal"] * 4 + ["critical"] * 4
    budget = 12 * 700 * 0.75  # 6,300 W for a fleet whose peak demand is about 8,000 W
    limits = [700.0] * 12
    rise, hold, fall = rng.randint(15, 30), rng.randint(10, 25), rng.randint(15, 30)
    over_streak, first_capped, critical_capped = 0, None, False
    rising = [False] * 12

    for tick in range(140):
        demand = [
            ramp(tick, 10, 1, 60, 1, 80, 650)
            if role == "batch"
            else ramp(tick, 0, rise, hold, fall, 120, 680) + rng.uniform(-20, 20)
            for role in roles
        ]
        gpus = [
            gpu(i, role, draw=min(d, limit), limit=limit)
            for i, (role, d, limit) in enumerate(zip(roles, demand, limits, strict=True))
        ]
        over_streak = over_streak + 1 if sum(g.draw_watts for g in gpus) > budget else 0
        assert over_streak <= 1, f"over budget for two decisions running at tick {tick}"

        decision = decide("polca", budget, gpus)
        for (_, index), cap in decision.limits.items():
            assert cap is None or 200 <= cap < 700
            new = 700.0 if cap is None else cap
            assert not (rising[index] and new < limits[index]), f"GPU {index} capped again at tick {tick}"
            rising[index] |= new > limits[index]
            limits[index] = new
        if decision.limits and first_capped is None:
            first_capped = roles_capped(decision, gpus)
        critical_capped |= any(limits[i] < 700 for i, role in enumerate(roles) if role == "critical")

    assert first_capped == {"batch"}
    assert not critical_capped
    assert limits == [700.0] * 12
