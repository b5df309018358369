"""Device telemetry: read each device's utilisation, memory, power, temperature and clock.

Three sources, chosen per device: NVML for real GPUs, /proc for the CPU device,
and a load-driven model for simulated devices (``--simulate 8xH100``) so the
power-cap controllers and the dashboard have realistic numbers on a laptop.
Nothing here raises on a metric a device cannot report: it is None instead,
because a telemetry hiccup must never take the agent down.

The result has the shape of ``controlplane.telemetry.schema.TelemetrySample``.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from agents.devices import GPU_TYPES
from plugins.sim import power as sim_power

MIB = 1024 * 1024


@dataclass(frozen=True)
class PowerModel:
    """How a simulated type behaves; memory and default power limit come from devices.GPU_TYPES.

    ``min_limit_fraction`` is the lowest power limit the board accepts, as a
    fraction of its default limit (real boards accept roughly 0.3-0.5 of it).
    The figures are :mod:`plugins.sim.power`'s, so simulated agents and the
    ``flotilla bench powercap`` simulation describe the same boards.
    """

    idle_fraction: float  # idle draw / default power limit
    boost_mhz: float  # SM clock under load
    idle_mhz: float  # SM clock at rest
    min_limit_fraction: float


def _from_sim(gpu_type: str) -> PowerModel:
    sim = sim_power.power_model(gpu_type, tdp_watts=1.0)
    return PowerModel(sim.idle, sim.boost_mhz, sim.idle_mhz, sim.min_limit)


# Keyed by the same type names as agents.devices.GPU_TYPES (published boost clocks).
POWER_MODELS: dict[str, PowerModel] = {gpu_type: _from_sim(gpu_type) for gpu_type in GPU_TYPES}
DEFAULT_MODEL = _from_sim("")
AMBIENT_C = 30.0
HOT_RISE_C = 52.0  # degrees above ambient at the full default power limit
JITTER_PERCENT = 2.0


def power_model(gpu_type: str) -> PowerModel:
    return POWER_MODELS.get(gpu_type, DEFAULT_MODEL)


def default_limit(device: dict[str, Any]) -> float:
    """The board's default power limit: the device's own figure, else its type's."""
    limit = device.get("powerLimitW") or GPU_TYPES.get(device.get("type", ""), {}).get("powerLimitW")
    return float(limit or 300)


# --- simulated devices --------------------------------------------------------------


def _jitter(index: int, moment: float) -> float:
    """A small wobble in [-JITTER_PERCENT, +JITTER_PERCENT], a pure function of device and time."""
    return JITTER_PERCENT * math.sin(1.7 * index + moment / 7.0)


def simulated_sample(
    device: dict[str, Any], load: float, limit: float | None = None, moment: float = 0.0
) -> dict[str, Any]:
    """The model (:mod:`plugins.sim.power`): draw rises from idle to the training draw with
    load, capped at ``limit``.

    A cap below what the load demands clamps the draw and lowers the clock by the cube
    root of the dynamic power it leaves, which is what the power-cap controllers trade
    against throughput (``plugins.sim.power.PowerModel.speed``). The draw never exceeds
    the limit.
    """
    full = default_limit(device)
    model = sim_power.power_model(device.get("type", ""), tdp_watts=full)
    cap = full if limit is None else float(limit)
    busy = min(1.0, max(0.0, float(load)))
    utilization = min(100.0, max(0.0, 100.0 * busy + _jitter(device["index"], moment))) if busy else 0.0
    demand = model.busy_watts(utilization / 100.0)
    power = min(demand, cap)
    clock = model.boost_mhz * model.clock_share(demand, cap) if busy else model.idle_mhz
    return {
        "index": device["index"],
        "utilization": round(utilization, 2),
        "memoryUsedMiB": int(busy * 0.9 * int(device.get("memoryMiB") or 0)),
        "powerW": round(power, 2),
        "powerLimitW": round(cap, 2),
        "temperatureC": round(AMBIENT_C + HOT_RISE_C * power / full, 1),
        "smClockMHz": round(clock, 1),
    }


# --- the CPU device -----------------------------------------------------------------


class CpuSampler:
    """CPU busy percentage from /proc/stat deltas between calls.

    The first call has nothing to compare with, so it reports the average since
    boot; every later call reports the interval since the previous one.
    """

    def __init__(self, stat_path: str = "/proc/stat", meminfo_path: str = "/proc/meminfo"):
        self.stat_path = Path(stat_path)
        self.meminfo_path = Path(meminfo_path)
        self._last: tuple[int, int] | None = None
        self._lock = threading.Lock()

    def _times(self) -> tuple[int, int] | None:
        """(busy, total) jiffies from the aggregate ``cpu`` line."""
        try:
            first = self.stat_path.read_text().splitlines()[0].split()
        except (OSError, IndexError):
            return None
        if not first or first[0] != "cpu":
            return None
        values = [int(v) for v in first[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        # guest time is already counted in user/nice, so leave the guest columns out of the total
        total = sum(values[:8])
        return total - idle, total

    def utilization(self) -> float | None:
        times = self._times()
        if times is None:
            return None
        with self._lock:
            previous, self._last = self._last, times
        busy, total = times
        if previous is not None and total > previous[1]:
            busy, total = busy - previous[0], total - previous[1]
        return round(100.0 * busy / total, 2) if total > 0 else None

    def memory_used_mib(self) -> int | None:
        fields: dict[str, int] = {}
        try:
            for line in self.meminfo_path.read_text().splitlines():
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts:
                    fields[key] = int(parts[0])  # kB
        except (OSError, ValueError):
            return None
        if "MemTotal" not in fields or "MemAvailable" not in fields:
            return None
        return max(0, fields["MemTotal"] - fields["MemAvailable"]) // 1024

    def sample(self, index: int = 0) -> dict[str, Any]:
        return {
            "index": index,
            "utilization": self.utilization(),
            "memoryUsedMiB": self.memory_used_mib(),
            "powerW": None,  # RAPL counters need root on current kernels
            "powerLimitW": None,
            "temperatureC": None,
            "smClockMHz": None,
        }


CPU = CpuSampler()


# --- NVML devices -------------------------------------------------------------------

_nvml_state: dict[str, Any] = {"module": None, "tried": False}
_nvml_lock = threading.Lock()


def nvml() -> ModuleType | None:
    """pynvml, initialised once per process; None where there is no driver or package."""
    with _nvml_lock:
        if not _nvml_state["tried"]:
            _nvml_state["tried"] = True
            try:
                import pynvml

                pynvml.nvmlInit()
                _nvml_state["module"] = pynvml
            except Exception:  # ImportError, NVMLError, a broken driver: all mean "no NVML"
                _nvml_state["module"] = None
        return _nvml_state["module"]


def guarded(read: Any, *args: Any) -> Any:
    """Call one NVML getter; a metric the device does not support becomes None."""
    try:
        return read(*args)
    except Exception:  # NVMLError_NotSupported and friends
        return None


def nvml_sample(pynvml: ModuleType, index: int) -> dict[str, Any]:
    sample: dict[str, Any] = {"index": index}
    handle = guarded(pynvml.nvmlDeviceGetHandleByIndex, index)
    if handle is None:
        return sample
    rates = guarded(pynvml.nvmlDeviceGetUtilizationRates, handle)
    memory = guarded(pynvml.nvmlDeviceGetMemoryInfo, handle)
    power = guarded(pynvml.nvmlDeviceGetPowerUsage, handle)  # milliwatts
    limit = guarded(pynvml.nvmlDeviceGetEnforcedPowerLimit, handle)
    temperature = guarded(pynvml.nvmlDeviceGetTemperature, handle, pynvml.NVML_TEMPERATURE_GPU)
    clock = guarded(pynvml.nvmlDeviceGetClockInfo, handle, pynvml.NVML_CLOCK_SM)
    sample["utilization"] = float(rates.gpu) if rates is not None else None
    sample["memoryUsedMiB"] = int(memory.used // MIB) if memory is not None else None
    sample["powerW"] = power / 1000.0 if power is not None else None
    sample["powerLimitW"] = limit / 1000.0 if limit is not None else None
    sample["temperatureC"] = float(temperature) if temperature is not None else None
    sample["smClockMHz"] = float(clock) if clock is not None else None
    return sample


# --- all devices --------------------------------------------------------------------


def collect(
    devices: list[dict[str, Any]],
    load: dict[int, float] | None = None,
    *,
    limits: dict[int, float] | None = None,
    workloads: dict[str, dict[str, float]] | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """One TelemetrySample-shaped dict for these devices.

    ``load`` is each simulated device's busy fraction (0..1) from the simulated
    Workloads it runs; ``limits`` the power limits a simulate power backend set;
    ``workloads`` each Workload's runtime metrics, passed through.
    """
    load = load or {}
    limits = limits or {}
    moment = time.time() if now is None else now
    samples = []
    for device in devices:
        index = int(device["index"])
        if device.get("simulated"):
            sample = simulated_sample(device, load.get(index, 0.0), limits.get(index), moment)
        elif device.get("type") == "CPU":
            sample = CPU.sample(index)
        else:
            module = nvml()
            sample = nvml_sample(module, index) if module is not None else {"index": index}
        samples.append({k: v for k, v in sample.items() if v is not None})
    return {"devices": samples, "workloads": dict(workloads or {})}
