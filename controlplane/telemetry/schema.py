"""What an agent sends as telemetry, bounded in size (pure pydantic: agents import it).

Every number is finite and bounded, and every list and map has a maximum length,
so one malformed or hostile agent cannot store unbounded data or poison the
averages the power-cap controllers read.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from common.specs import MAX_DEVICES, name_problem

MAX_WORKLOADS = 256
MAX_METRICS = 64
METRIC_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$")
# Generous ceilings: the largest accelerators today draw ~1.4 kW and hold ~300 GiB.
MAX_WATTS = 20_000.0
MAX_MEMORY_MIB = 1 << 30
MAX_CLOCK_MHZ = 20_000.0

Finite = Annotated[float, Field(allow_inf_nan=False)]
# The device metrics, in the order the store keeps them (JSON key -> minute column stem).
DEVICE_METRICS = ("utilization", "memoryUsedMiB", "powerW", "powerLimitW", "temperatureC", "smClockMHz")


class DeviceSample(BaseModel):
    """One device's readings at one moment; a metric the device cannot report is None."""

    model_config = ConfigDict(extra="forbid")

    index: int = Field(ge=0, lt=MAX_DEVICES)
    # Nullable too: a CPU has no power reading without root, an old GPU no utilisation
    # counter, and a made-up zero would drag the minute averages down.
    utilization: Finite | None = Field(default=None, ge=0, le=100)
    memoryUsedMiB: int | None = Field(default=None, ge=0, le=MAX_MEMORY_MIB)
    powerW: Finite | None = Field(default=None, ge=0, le=MAX_WATTS)
    powerLimitW: Finite | None = Field(default=None, ge=0, le=MAX_WATTS)
    temperatureC: Finite | None = Field(default=None, ge=-100, le=300)
    smClockMHz: Finite | None = Field(default=None, ge=0, le=MAX_CLOCK_MHZ)


class TelemetrySample(BaseModel):
    """A node's sample: its devices, and each Workload's runtime metrics by name."""

    model_config = ConfigDict(extra="forbid")

    devices: list[DeviceSample] = Field(default_factory=list, max_length=MAX_DEVICES)
    workloads: dict[str, dict[str, Finite]] = Field(default_factory=dict, max_length=MAX_WORKLOADS)

    @field_validator("devices")
    @classmethod
    def _indices_unique(cls, devices: list[DeviceSample]) -> list[DeviceSample]:
        indices = [d.index for d in devices]
        if len(set(indices)) != len(indices):
            raise ValueError("device indices repeat; send each device once")
        return devices

    @field_validator("workloads")
    @classmethod
    def _workloads_named(cls, workloads: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for name, metrics in workloads.items():
            if problem := name_problem(name):
                raise ValueError(f"workload name {name!r} {problem}")
            if len(metrics) > MAX_METRICS:
                raise ValueError(f"workload {name!r} has {len(metrics)} metrics; the limit is {MAX_METRICS}")
            for metric in metrics:
                if not METRIC_NAME_RE.match(metric):
                    raise ValueError(
                        f"metric name {metric!r} of workload {name!r} must be 1-64 characters of "
                        "letters, digits, '_', '.', ':' or '-', starting with a letter or '_'"
                    )
        return workloads


def problems(exc: ValidationError, prefix: str = "") -> list[dict[str, Any]]:
    """pydantic errors as the API's problem details, each naming the field's path."""
    return [
        {
            "field": ".".join(p for p in [prefix, *(str(part) for part in err["loc"])] if p),
            "message": err["msg"].removeprefix("Value error, "),
            "fix": "send a sample shaped like controlplane.telemetry.schema.TelemetrySample",
        }
        for err in exc.errors()
    ]
