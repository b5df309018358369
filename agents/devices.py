"""Device discovery: NVML, then torch.cuda, then the CPU as one device.

The CPU counts as a device so a laptop can run the demo end to end. Simulated
devices (``--simulate 8xH100``) carry realistic memory and power figures.
"""

from __future__ import annotations

import os
import platform
import re
from typing import Any

# Published memory (MiB) and default power limits (W) for simulated devices.
GPU_TYPES: dict[str, dict[str, int]] = {
    "H200": {"memoryMiB": 143771, "powerLimitW": 700},
    "H100": {"memoryMiB": 81559, "powerLimitW": 700},
    "A100-80GB": {"memoryMiB": 81920, "powerLimitW": 400},
    "A100-40GB": {"memoryMiB": 40960, "powerLimitW": 400},
    "L40S": {"memoryMiB": 46068, "powerLimitW": 350},
    "A10G": {"memoryMiB": 23028, "powerLimitW": 300},
    "L4": {"memoryMiB": 23034, "powerLimitW": 72},
    "V100": {"memoryMiB": 32768, "powerLimitW": 300},
}


def parse_simulate(spec: str) -> list[dict[str, Any]]:
    """'8xH100' or '4xA100-80GB,4xL4' -> simulated device records."""
    devices: list[dict[str, Any]] = []
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*([A-Za-z0-9.-]+)\s*", part)
        if not match:
            raise ValueError(f"--simulate term {part!r} is not COUNTxTYPE (e.g. 8xH100)")
        count, gpu_type = int(match.group(1)), match.group(2)
        if gpu_type not in GPU_TYPES:
            raise ValueError(f"unknown GPU type {gpu_type!r}; known: {', '.join(GPU_TYPES)}")
        for _ in range(count):
            index = len(devices)
            devices.append(
                {
                    "index": index,
                    "type": gpu_type,
                    "name": f"Simulated {gpu_type}",
                    "uuid": f"SIM-{gpu_type}-{index}",
                    "simulated": True,
                    "healthy": True,
                    **GPU_TYPES[gpu_type],
                }
            )
    return devices


def _nvml_devices() -> list[dict[str, Any]]:
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    devices = []
    try:
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else name
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total // (1024 * 1024)
            device = {
                "index": index,
                "type": gpu_type_of(name, memory),
                "name": name,
                "uuid": uuid.decode() if isinstance(uuid, bytes) else uuid,
                "memoryMiB": int(memory),
                "healthy": True,
            }
            device.update(_nvml_optional(pynvml, handle))
            devices.append(device)
    finally:
        pynvml.nvmlShutdown()
    return devices


def _nvml_optional(pynvml: Any, handle: Any) -> dict[str, Any]:
    """Power limit with its min/max constraints and the maximum clocks; each read is
    guarded, since boards and drivers leave some unsupported."""
    found: dict[str, Any] = {}
    readings = {
        "powerLimitW": lambda: pynvml.nvmlDeviceGetPowerManagementLimit(handle) / 1000,
        "powerLimitRangeW": lambda: [
            value / 1000 for value in pynvml.nvmlDeviceGetPowerManagementLimitConstraints(handle)
        ],
        "defaultPowerLimitW": lambda: pynvml.nvmlDeviceGetPowerManagementDefaultLimit(handle) / 1000,
        "maxSmClockMHz": lambda: pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM),
        "maxMemoryClockMHz": lambda: pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM),
    }
    for key, read in readings.items():
        try:
            found[key] = read()
        except pynvml.NVMLError:
            continue
    return found


def _torch_devices() -> list[dict[str, Any]]:
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    devices = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        memory = props.total_memory // (1024 * 1024)
        devices.append(
            {
                "index": index,
                "type": gpu_type_of(props.name, memory),
                "name": props.name,
                "uuid": str(getattr(props, "uuid", "")),
                "memoryMiB": int(memory),
                "healthy": True,
            }
        )
    return devices


def gpu_type_of(name: str, memory_mib: int) -> str:
    """Map a marketing name to the short type operators use in gpuTypes and prices."""
    upper = name.upper()
    for short in ("H200", "H100", "L40S", "A10G", "L4", "V100"):
        if short in upper:
            return short
    if "A100" in upper:
        return "A100-80GB" if memory_mib > 50_000 else "A100-40GB"
    return re.sub(r"[^A-Za-z0-9.-]+", "-", name).strip("-") or "GPU"


def _cpu_device() -> dict[str, Any]:
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        memory = pages * page_size // (1024 * 1024)
    except (ValueError, OSError, AttributeError):
        memory = 0
    return {
        "index": 0,
        "type": "CPU",
        "name": platform.processor() or platform.machine() or "CPU",
        "uuid": "CPU-0",
        "memoryMiB": int(memory),
        "cores": os.cpu_count() or 1,
        "healthy": True,
    }


def discover() -> list[dict[str, Any]]:
    return _nvml_devices() or _torch_devices() or [_cpu_device()]
