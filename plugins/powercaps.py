"""Built-in power-cap plugins: ``none`` (observe only), ``static`` (the naive baseline) and
``polca`` (priority-aware oversubscription, after POLCA, Patel et al., ASPLOS'24).

A powercap plugin is a pure function of the cluster's budget and the GPUs' last telemetry:
the control plane may run it in any worker, the simulator runs it in a loop, and a unit test
calls it directly. Its only memory is the limits the GPUs already carry (``limit_watts <
max_watts`` is a cap), so ``polca``'s hysteresis lives in its thresholds, not in hidden state:

===========================  ====================================================================
draw D against budget B      polca does
===========================  ====================================================================
D > emergencyThreshold * B   cap whatever it takes, lowest priority first, down to each class's
                             floor, until the projected draw is <= capThreshold * B
D > capThreshold * B         cap the lowest-priority unprotected class with room, one step
D < releaseThreshold * B     raise caps one step, highest priority first, while the worst-case
                             projected draw stays <= capThreshold * B; at max_watts a cap lifts
anything in between          hold: the hysteresis band, nothing changes
===========================  ====================================================================

POLCA caps low-priority work first at a lower threshold and everything at a higher one, and
releases only once the draw has fallen well below the cap threshold; its published results
(about 30% more inference servers under one budget) are what ``flotilla bench powercap``
checks. ``minimum_draw`` and ``shortfall`` tell the controller when no caps can meet a budget.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

from common.specs import PRIORITY_NAMES
from plugins.hookspecs import hookimpl
from plugins.types import GpuPower, PowerBudget, PowerDecision

Key = tuple[str, int]
Floor = Callable[[GpuPower], float]
_NAMES = {value: name for name, value in PRIORITY_NAMES.items()}
_BISECT_ROUNDS = 40  # the cap level to within 2**-40 of max_watts: far below a watt
_ROUNDING = 1e-6  # caps are whole watts; this keeps 399.9999999 W (a bisected 400 W) at 400


# --- what the controller and the bench share ---------------------------------------------


def counted_draw(gpu: GpuPower) -> float:
    """The draw a policy counts: a stale GPU's limit (the most it can draw), never less."""
    return gpu.limit_watts if gpu.stale else gpu.draw_watts


def minimum_draw(gpus: Iterable[GpuPower]) -> float:
    """The cluster's draw if every GPU were capped at its board minimum."""
    return sum(min(counted_draw(gpu), gpu.min_watts) for gpu in gpus)


def shortfall(budget: PowerBudget, gpus: Iterable[GpuPower]) -> float:
    """Watts by which the budget stays exceeded even with every GPU at its board minimum."""
    return max(0.0, minimum_draw(gpus) - budget.watts)


def effective_priority(gpu: GpuPower) -> int:
    """An idle GPU (no owner) gives its power up first, whatever its priority says."""
    return gpu.priority if gpu.owner is not None else 0


def _watts(value: float) -> str:
    return f"{value:,.0f} W"


def _percent(share: float) -> str:
    return f"{share * 100:g}%"


def _class_label(priority: int, group: list[GpuPower]) -> str:
    if priority == 0 and all(gpu.owner is None for gpu in group):
        return "idle"
    return _NAMES.get(priority, f"priority-{priority}")


def _range(values: Iterable[float]) -> str:
    values = sorted(values)
    low, high = values[0], values[-1]
    return _watts(low) if round(low) == round(high) else f"{low:,.0f}-{_watts(high)}"


def _capped(head: str, priority: int, group: list[GpuPower], caps: list[float], how: str = "") -> str:
    return f"{head}: capped {len(caps):,} {_class_label(priority, group)} GPUs {how}to {_range(caps)}"


def _draw_vs_budget(draw: float, budget: PowerBudget) -> str:
    share = draw / budget.watts if budget.watts > 0 else math.inf
    return f"draw {_watts(draw)} of {_watts(budget.watts)} budget ({share * 100:.0f}%)"


# --- none and static -----------------------------------------------------------------------


class NoneParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ObserveOnly:
    name: ClassVar[str] = "none"
    kind: ClassVar[str] = "powercap"
    description: ClassVar[str] = (
        "Observe only: never caps, lifts any cap a previous policy left, and reports the "
        "cluster's draw against its budget."
    )
    Params: ClassVar[type[BaseModel]] = NoneParams

    def decide(self, *, budget: PowerBudget, gpus: list[GpuPower], params: BaseModel) -> PowerDecision:
        draw = sum(counted_draw(gpu) for gpu in gpus)
        notes = [_draw_vs_budget(draw, budget)]
        if draw > budget.watts:
            notes.append(f"over budget by {_watts(draw - budget.watts)}; observe only, nothing capped")
        lifted = {(g.node, g.index): None for g in gpus if g.limit_watts < g.max_watts}
        if lifted:
            notes.append(f"lifted {len(lifted)} caps left by a previous policy")
        return PowerDecision(limits=lifted, notes=notes)


class StaticParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reserveShare: float = Field(
        default=0.0,
        ge=0.0,
        lt=0.5,
        description="Share of the budget kept back (for fans, CPUs, what the GPUs' sensors miss) "
        "before the rest is split evenly between the GPUs.",
    )


class Static:
    name: ClassVar[str] = "static"
    kind: ClassVar[str] = "powercap"
    description: ClassVar[str] = (
        "The naive baseline: every GPU capped at an even share of the budget, whatever it runs "
        "and however much it draws, clamped to the board's range."
    )
    Params: ClassVar[type[BaseModel]] = StaticParams

    def decide(self, *, budget: PowerBudget, gpus: list[GpuPower], params: BaseModel) -> PowerDecision:
        assert isinstance(params, StaticParams)
        if not gpus:
            return PowerDecision(notes=["no GPUs to cap"])
        share = budget.watts * (1.0 - params.reserveShare) / len(gpus)
        limits: dict[Key, float | None] = {
            (g.node, g.index): min(g.max_watts, max(g.min_watts, share)) for g in gpus
        }
        draw = sum(counted_draw(gpu) for gpu in gpus)
        notes = [f"{_draw_vs_budget(draw, budget)}: {len(gpus)} GPUs at {_watts(share)} each, clamped"]
        return PowerDecision(limits=limits, notes=notes)


# --- polca -----------------------------------------------------------------------------------


def _refuse(field: str, message: str, value: float) -> ValidationError:
    """A validation error located at ``field``, so apply names it (spec.params.<field>)."""
    error = PydanticCustomError("threshold_order", message)
    return ValidationError.from_exception_data(
        "PolcaParams", [InitErrorDetails(type=error, loc=(field,), input=value)]
    )


class PolcaParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    capThreshold: float = Field(
        default=0.85,
        gt=0.0,
        le=1.0,
        description="Share of the budget above which the lowest-priority unprotected class with "
        "room is capped one step per decision; also the draw the emergency path and releases aim "
        "to stay under.",
    )
    emergencyThreshold: float = Field(
        default=0.95,
        gt=0.0,
        le=1.0,
        description="Share of the budget above which every class is capped as hard as needed, "
        "lowest priority first, to bring the projected draw back to capThreshold.",
    )
    releaseThreshold: float = Field(
        default=0.75,
        ge=0.0,
        lt=1.0,
        description="Share of the budget below which caps are raised one step, highest priority "
        "first; between it and capThreshold nothing changes (the hysteresis band).",
    )
    stepShare: float = Field(
        default=0.1,
        gt=0.0,
        le=0.5,
        description="One capping or release step, as a share of each GPU's maximum (default) limit.",
    )
    protectPriority: int = Field(
        default=100,
        ge=1,
        le=101,
        description="Priorities at or above this (100: critical) are capped only above "
        "emergencyThreshold; 101 protects nothing.",
    )
    protectedFloorShare: float = Field(
        default=0.7,
        ge=0.0,
        le=1.0,
        description="Protected GPUs are not capped below this share of their maximum limit, unless "
        "even that cannot keep the draw within the budget.",
    )
    floorShare: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Unprotected GPUs are not capped below this share of their maximum limit "
        "(0: the board's minimum) while the budget can be met otherwise.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> PolcaParams:
        """releaseThreshold < capThreshold < emergencyThreshold, and protected floors above the
        others; the field blamed is the one the user set (the later one when both or neither)."""
        pairs = (
            ("releaseThreshold", "capThreshold", operator.lt, "must be below"),
            ("capThreshold", "emergencyThreshold", operator.lt, "must be below"),
            ("floorShare", "protectedFloorShare", operator.le, "must not exceed"),
        )
        for low, high, holds, relation in pairs:
            low_value, high_value = getattr(self, low), getattr(self, high)
            if holds(low_value, high_value):
                continue
            blamed = low if low in self.model_fields_set and high not in self.model_fields_set else high
            message = f"{low} ({low_value:g}) {relation} {high} ({high_value:g})"
            raise _refuse(blamed, message, getattr(self, blamed))
        return self


class _Fleet:
    """The decision being built: each GPU's planned limit and the draw it projects."""

    def __init__(self, gpus: list[GpuPower], params: PolcaParams):
        self.gpus = gpus
        self.params = params
        self.limit = {_key(g): min(g.limit_watts, g.max_watts) for g in gpus}
        # A board never draws above its limit for long: a reading above it is a cap the
        # telemetry has not caught up with yet.
        self.draw = {_key(g): min(counted_draw(g), self.limit[_key(g)]) for g in gpus}
        self.changed: dict[Key, float | None] = {}

    def total(self) -> float:
        return sum(self.draw.values())

    def floor(self, gpu: GpuPower) -> float:
        share = self.params.protectedFloorShare if self.protected(gpu) else self.params.floorShare
        # Whole watts, rounded up: 0.7 x 700 W is 489.99999999999994 in floating point.
        return min(gpu.max_watts, max(gpu.min_watts, math.ceil(share * gpu.max_watts - _ROUNDING)))

    def protected(self, gpu: GpuPower) -> bool:
        return effective_priority(gpu) >= self.params.protectPriority

    def classes(self, protected: bool) -> list[tuple[int, list[GpuPower]]]:
        """The protected (or unprotected) GPUs by priority, lowest first."""
        by_priority: dict[int, list[GpuPower]] = {}
        for gpu in self.gpus:
            if self.protected(gpu) == protected:
                by_priority.setdefault(effective_priority(gpu), []).append(gpu)
        return sorted(by_priority.items())

    def cap(self, gpu: GpuPower, watts: float) -> None:
        key = _key(gpu)
        self.limit[key] = watts
        self.draw[key] = min(self.draw[key], watts)
        self.changed[key] = watts

    def raise_to(self, gpu: GpuPower, watts: float) -> None:
        key = _key(gpu)
        lifted = watts >= gpu.max_watts
        self.limit[key] = gpu.max_watts if lifted else watts
        self.changed[key] = None if lifted else watts


def _key(gpu: GpuPower) -> Key:
    return (gpu.node, gpu.index)


def _squeeze(fleet: _Fleet, group: list[GpuPower], floor: Floor, target: float) -> list[float]:
    """Cap ``group`` at one level (a share of each GPU's max, never under ``floor``, never above
    its planned limit), the highest level that brings the projected draw to ``target``, or
    every GPU at its floor when none does. Returns the caps applied."""

    def caps(level: float) -> list[float]:
        return [
            min(fleet.limit[_key(g)], max(floor(g), math.floor(level * g.max_watts + _ROUNDING)))
            for g in group
        ]

    draws = [fleet.draw[_key(g)] for g in group]
    members = {_key(g) for g in group}
    rest = sum(draw for key, draw in fleet.draw.items() if key not in members)

    def projected(level: float) -> float:
        return rest + sum(min(d, cap) for d, cap in zip(draws, caps(level), strict=True))

    if projected(0.0) > target:
        level = 0.0
    else:
        low, high = 0.0, 1.0
        for _ in range(_BISECT_ROUNDS):
            middle = (low + high) / 2
            low, high = (middle, high) if projected(middle) <= target + _ROUNDING else (low, middle)
        level = low
    applied = []
    for gpu, cap in zip(group, caps(level), strict=True):
        if cap < fleet.limit[_key(gpu)]:
            fleet.cap(gpu, cap)
            applied.append(cap)
    return applied


class Polca:
    name: ClassVar[str] = "polca"
    kind: ClassVar[str] = "powercap"
    description: ClassVar[str] = (
        "POLCA (ASPLOS'24): thresholds on the cluster's draw against its budget; caps batch work "
        "first and critical serving last, in steps, harder in an emergency, and lifts caps with "
        "hysteresis once the draw falls back."
    )
    Params: ClassVar[type[BaseModel]] = PolcaParams

    def decide(self, *, budget: PowerBudget, gpus: list[GpuPower], params: BaseModel) -> PowerDecision:
        assert isinstance(params, PolcaParams)
        if not gpus:
            return PowerDecision(notes=["no GPUs to cap"])
        fleet = _Fleet(gpus, params)
        draw = fleet.total()
        if draw > params.emergencyThreshold * budget.watts:
            notes = self._emergency(fleet, budget, draw)
        elif draw > params.capThreshold * budget.watts:
            notes = self._step_down(fleet, budget, draw)
        elif draw < params.releaseThreshold * budget.watts:
            notes = self._release(fleet, budget, draw)
        else:
            notes = []  # the hysteresis band: hold
        return PowerDecision(limits=fleet.changed, notes=notes)

    def _emergency(self, fleet: _Fleet, budget: PowerBudget, draw: float) -> list[str]:
        """Everything it takes, lowest priority first: unprotected classes to their floor, then
        protected ones to theirs, aiming at capThreshold; then, only if the budget itself is
        still exceeded, every class down to the board minimum, lowest priority first."""
        params = fleet.params
        head = f"draw {_watts(draw)} > {_percent(params.emergencyThreshold)} of {_watts(budget.watts)}"
        target = params.capThreshold * budget.watts
        notes: list[str] = []

        def squeeze(group: list[GpuPower], priority: int, floor: Floor, goal: float) -> None:
            applied = _squeeze(fleet, group, floor, goal)
            if applied:
                notes.append(_capped(head, priority, group, applied))

        for protected in (False, True):
            for priority, group in fleet.classes(protected):
                if fleet.total() <= target:
                    return notes
                squeeze(group, priority, fleet.floor, target)
        for protected in (False, True):
            for priority, group in fleet.classes(protected):
                if fleet.total() <= budget.watts:
                    return notes
                squeeze(group, priority, lambda g: g.min_watts, budget.watts)
        if fleet.total() > budget.watts:
            notes.append(
                f"{head}: budget unmeetable, every GPU at its minimum still draws "
                f"{_watts(fleet.total())} (short {_watts(fleet.total() - budget.watts)})"
            )
        return notes

    def _step_down(self, fleet: _Fleet, budget: PowerBudget, draw: float) -> list[str]:
        """One step off the lowest-priority unprotected class whose caps still bite: each GPU
        goes to a step below what it draws now (below its limit if it draws more), so the step
        lowers the draw at once instead of trimming unused headroom."""
        params = fleet.params
        head = f"draw {_watts(draw)} > {_percent(params.capThreshold)} of {_watts(budget.watts)}"
        for priority, group in fleet.classes(protected=False):
            if not any(min(fleet.draw[_key(g)], fleet.limit[_key(g)]) > fleet.floor(g) for g in group):
                continue
            applied = []
            for gpu in group:
                key, floor = _key(gpu), fleet.floor(gpu)
                if fleet.limit[key] <= floor:
                    continue
                below = min(fleet.draw[key], fleet.limit[key]) - params.stepShare * gpu.max_watts
                fleet.cap(gpu, max(floor, math.floor(below)))
                applied.append(fleet.limit[key])
            return [_capped(head, priority, group, applied, "one step ")]
        return [f"{head}: every unprotected GPU is at its floor; holding until the emergency threshold"]

    def _release(self, fleet: _Fleet, budget: PowerBudget, draw: float) -> list[str]:
        """One step up per capped GPU, highest priority first (the most capped first within a
        class), stopping at the first raise that could take the draw past capThreshold if the
        raised GPUs used all their new room."""
        params = fleet.params
        ceiling = params.capThreshold * budget.watts
        capped = [g for g in fleet.gpus if fleet.limit[_key(g)] < g.max_watts]
        capped.sort(key=lambda g: (-effective_priority(g), fleet.limit[_key(g)] / g.max_watts, _key(g)))
        projected, raised, lifted = draw, 0, 0
        for gpu in capped:
            limit = fleet.limit[_key(gpu)]
            new = min(gpu.max_watts, limit + params.stepShare * gpu.max_watts)
            if projected + (new - limit) > ceiling:
                break
            projected += new - limit
            fleet.raise_to(gpu, new)
            if new >= gpu.max_watts:
                lifted += 1
            else:
                raised += 1
        if not raised and not lifted:
            return []
        head = f"draw {_watts(draw)} < {_percent(params.releaseThreshold)} of {_watts(budget.watts)}"
        return [f"{head}: raised {raised} caps one step, lifted {lifted} (worst case {_watts(projected)})"]


@hookimpl
def register_powercaps():
    return [ObserveOnly(), Static(), Polca()]
