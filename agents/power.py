"""Power backends: how the agent applies the power limits the power-cap controllers ask for.

``--power-backend off`` (the default) only observes; ``simulate`` keeps limits in
memory, clamped as a real board would clamp them; ``nvml`` changes real GPUs'
limits and so demands both root and an explicit ``confirm=True``. Changing a
real GPU's power limit on a shared machine affects everyone on it (DESIGN §6):
tests and benchmarks use ``simulate``.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Protocol, runtime_checkable

from agents.telemetry import default_limit, guarded, nvml, power_model
from common.specs import MAX_POWER_ERROR_CHARS, MAX_POWER_LIMIT_WATTS

log = logging.getLogger("flotilla.agent.power")
BACKENDS = ("off", "simulate", "nvml")


class PowerBackendError(RuntimeError):
    """The backend cannot apply a limit (it is off, or the device is unknown)."""


@runtime_checkable
class PowerBackend(Protocol):
    name: str

    def set_limit(self, index: int, watts: float) -> float:
        """Apply a power limit to one device; return the watts actually applied (after clamping)."""
        ...

    def clear_limit(self, index: int) -> float:
        """Lift the cap: put the device back at its board's default limit; return it in watts."""
        ...

    def limits(self) -> dict[int, float]:
        """Each device's current power limit in watts, where known."""
        ...


def _finite(watts: float) -> float:
    value = float(watts)
    if not math.isfinite(value):
        raise ValueError(f"power limit {watts!r} is not a finite number of watts")
    return value


class OffBackend:
    """Observe only: reports limits, refuses to change them."""

    name = "off"

    def __init__(self, devices: list[dict[str, Any]]):
        self.devices = devices

    def set_limit(self, index: int, watts: float) -> float:
        raise PowerBackendError(
            f"cannot set device {index}'s power limit to {watts} W: the power backend is off "
            "(observe only); start the agent with --power-backend simulate or nvml to apply limits"
        )

    def clear_limit(self, index: int) -> float:
        raise PowerBackendError(
            f"cannot put device {index}'s power limit back to its default: the power backend is off "
            "(observe only)"
        )

    def limits(self) -> dict[int, float]:
        """Live NVML limits for real GPUs where NVML answers, else discovery's figures."""
        module = nvml()
        observed: dict[int, float] = {}
        for device in self.devices:
            index = int(device["index"])
            live = None
            if module is not None and not device.get("simulated") and device.get("type") != "CPU":
                handle = guarded(module.nvmlDeviceGetHandleByIndex, index)
                milliwatts = guarded(module.nvmlDeviceGetEnforcedPowerLimit, handle) if handle else None
                live = milliwatts / 1000.0 if milliwatts is not None else None
            if live is not None:
                observed[index] = live
            elif device.get("powerLimitW"):
                observed[index] = float(device["powerLimitW"])
        return observed


def simulated_range(device: dict[str, Any]) -> tuple[float, float] | None:
    """A simulated board's (min, max) power limit in watts: max is the type's default limit,
    min ``PowerModel.min_limit_fraction`` of it; None for the CPU device."""
    if device.get("type") == "CPU":
        return None
    top = default_limit(device)
    return round(top * power_model(device.get("type", "")).min_limit_fraction, 1), top


class SimulatedBackend:
    """Limits held in memory, clamped to each device's [min, max] constraint.

    max is the type's default power limit (boards do not go above it by
    default); min is ``PowerModel.min_limit_fraction`` of it, 0.3-0.5 depending
    on the type, as NVML reports for real boards (an H100 SXM accepts 200-700 W).
    """

    name = "simulate"

    def __init__(self, devices: list[dict[str, Any]]):
        self.constraints: dict[int, tuple[float, float]] = {}
        self._limits: dict[int, float] = {}
        for device in devices:
            if device.get("type") == "CPU":
                continue
            index = int(device["index"])
            self.constraints[index] = simulated_range(device)  # type: ignore[assignment]
            self._limits[index] = self.constraints[index][1]

    def _constraint(self, index: int) -> tuple[float, float]:
        if index not in self.constraints:
            raise PowerBackendError(
                f"device {index} has no power limit to set; known devices: {sorted(self.constraints)}"
            )
        return self.constraints[index]

    def set_limit(self, index: int, watts: float) -> float:
        low, high = self._constraint(index)
        applied = min(high, max(low, _finite(watts)))
        self._limits[index] = applied
        return applied

    def clear_limit(self, index: int) -> float:
        self._limits[index] = self._constraint(index)[1]
        return self._limits[index]

    def limits(self) -> dict[int, float]:
        return dict(self._limits)


class NvmlBackend:
    """Real power limits through NVML, clamped to the board's constraints.

    Refuses to exist unless the agent runs as root *and* was asked explicitly
    (``--power-backend nvml`` passes ``confirm=True``): either alone is too easy
    to get by accident on a shared machine.
    """

    name = "nvml"

    def __init__(self, devices: list[dict[str, Any]], confirm: bool = False):
        self.devices = devices
        self.confirm = confirm
        self._check_allowed()

    def _check_allowed(self) -> None:
        missing = []
        if not self.confirm:
            missing.append("it was not confirmed (pass confirm=True / --power-backend nvml explicitly)")
        if os.geteuid() != 0:
            missing.append("the agent is not running as root (NVML refuses power changes otherwise)")
        if missing:
            raise PermissionError(
                "the nvml power backend changes real GPUs' power limits, so it needs both root and "
                "an explicit confirmation; here "
                + " and ".join(missing)
                + ". Use --power-backend simulate on shared machines."
            )

    def set_limit(self, index: int, watts: float) -> float:
        self._check_allowed()
        target = _finite(watts)
        module = nvml()
        if module is None:
            raise PowerBackendError("NVML is not available on this machine (no driver or no nvidia-ml-py)")
        handle = module.nvmlDeviceGetHandleByIndex(index)
        low, high = module.nvmlDeviceGetPowerManagementLimitConstraints(handle)  # milliwatts
        milliwatts = int(min(high, max(low, target * 1000.0)))
        module.nvmlDeviceSetPowerManagementLimit(handle, milliwatts)
        return milliwatts / 1000.0

    def clear_limit(self, index: int) -> float:
        self._check_allowed()
        module = nvml()
        if module is None:
            raise PowerBackendError("NVML is not available on this machine (no driver or no nvidia-ml-py)")
        handle = module.nvmlDeviceGetHandleByIndex(index)
        return self.set_limit(index, module.nvmlDeviceGetPowerManagementDefaultLimit(handle) / 1000.0)

    def limits(self) -> dict[int, float]:
        return OffBackend(self.devices).limits()


def make_backend(name: str, devices: list[dict[str, Any]], confirm: bool = False) -> PowerBackend:
    """The backend ``--power-backend NAME`` selects."""
    if name == "off":
        return OffBackend(devices)
    if name == "simulate":
        return SimulatedBackend(devices)
    if name == "nvml":
        return NvmlBackend(devices, confirm=confirm)
    raise ValueError(f"unknown power backend {name!r}; use one of: {', '.join(BACKENDS)}")


class LimitFollower:
    """Applies the control plane's desired limits (the heartbeat answer's ``powerLimits``)
    through a backend, and keeps the report for the next heartbeat.

    Only a change is applied: a GPU whose desired value is what was applied last time is
    left alone, so a steady answer costs nothing. A failure (the backend is off, a GPU
    the board does not have) is reported, not retried every heartbeat; ``forget`` makes
    the next answer count as new, as after a re-registration. Nothing here raises: the
    heartbeat loop must keep the node alive whatever the power backend does.
    """

    def __init__(self, backend: PowerBackend):
        self.backend = backend
        self.seen: dict[int, float | None] = {}
        # The power fields for the next heartbeat, until the control plane has taken them.
        self.report: dict[str, Any] | None = None
        self._warned_off = False
        self._malformed: list[str] = []

    def forget(self) -> None:
        self.seen = {}

    def follow(self, desired: Any) -> None:
        """Apply what changed in ``desired`` ({"INDEX": watts or None}); set ``report``."""
        wanted, errors = parse_limits(desired)
        changed = {i: w for i, w in wanted.items() if i not in self.seen or self.seen[i] != w}
        if not changed and errors == self._malformed:
            return
        self.seen.update(changed)
        self._malformed = list(errors)
        if self.backend.name == "off" and changed:
            if not self._warned_off:
                log.warning(
                    "the control plane asks for power limits but the power backend is off (observe "
                    "only); start the agent with --power-backend simulate or nvml to apply them"
                )
                self._warned_off = True
            errors.append("the power backend is off (observe only): no limit was changed")
            changed = {}
        for index, watts in sorted(changed.items()):
            try:
                if watts is None:
                    applied = self.backend.clear_limit(index)
                else:
                    applied = self.backend.set_limit(index, watts)
                log.info("GPU %d power limit %s W (asked %s)", index, applied, watts or "default")
            except Exception as exc:  # NVML raises its own error types; none may stop the heartbeats
                errors.append(f"GPU {index}: {exc}")
                log.warning("GPU %d: power limit %s not applied: %s", index, watts, exc)
        self.report = {
            "appliedPowerLimits": {
                str(i): w
                for i, w in self.backend.limits().items()
                if math.isfinite(w) and 0 < w <= MAX_POWER_LIMIT_WATTS
            },
            "powerBackend": self.backend.name,
            "powerError": "; ".join(errors)[:MAX_POWER_ERROR_CHARS] or None,
        }

    def sent(self, report: dict[str, Any] | None) -> None:
        """The control plane took (or refused) ``report``: stop sending it."""
        if report is not None and self.report is report:
            self.report = None


def parse_limits(desired: Any) -> tuple[dict[int, float | None], list[str]]:
    """The well-formed entries of a ``powerLimits`` answer, and what was wrong with the rest."""
    if desired is None:
        return {}, []
    if not isinstance(desired, dict):
        return {}, [f"powerLimits is not an object: {type(desired).__name__}"]
    wanted: dict[int, float | None] = {}
    errors = []
    for key, watts in list(desired.items())[:1024]:
        number = isinstance(watts, int | float) and not isinstance(watts, bool) and math.isfinite(watts)
        if not (isinstance(key, str) and key.isdecimal() and (watts is None or (number and watts > 0))):
            errors.append(f"powerLimits.{str(key)[:8]}: {str(watts)[:16]} is not a GPU index and watts")
            continue
        wanted[int(key)] = None if watts is None else float(watts)
    return wanted, errors
