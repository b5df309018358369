"""A Node's GPU power limits: what controllers want, and what its agent applied.

Both are kept in the Node's ``status.power``, not in its spec: operators apply Node
specs (cordon, labels) and an apply replaces a spec whole, so a limit kept there would
be wiped by the next apply of a node file, and operator and controller would fight over
it. ``status.power`` has two writers, and neither touches the other's keys:

- ``desired`` (GPU index -> watts, or None to lift the cap back to the board's
  default), ``desiredBy``, ``desiredAt``: a controller, through
  :func:`set_desired_limits` and nothing else (:data:`CONTROLLER_KEYS`: an agent's PUT of
  its Node's status keeps them, ``controlplane.api.keep_controller_keys``);
- ``applied`` (GPU index -> watts the board has now), ``backend``, ``error``,
  ``appliedAt``: the node's agent, through its heartbeat (:func:`record_report`,
  called by ``controllers.nodes``).

The heartbeat answer carries ``desired`` to the agent as ``powerLimits``
(docs/agent.md, "Power limits").
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from django.db import transaction
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from common.problems import Problem
from common.specs import MAX_DEVICES, MAX_POWER_ERROR_CHARS, MAX_POWER_LIMIT_WATTS
from common.timeutil import now, rfc3339
from controlplane import events, store
from controlplane.models import Resource

AGENT_KEYS = ("applied", "backend", "error")
CONTROLLER_KEYS = ("desired", "desiredBy", "desiredAt")


def _index_key(value: str) -> str:
    if int(value) > 1023:
        raise ValueError("a GPU index is at most 1023")
    return value


# A GPU index as a JSON object key: "0", "7"; no sign, no leading zero, no spaces.
IndexKey = Annotated[str, Field(pattern=r"^(0|[1-9][0-9]{0,3})$"), AfterValidator(_index_key)]
GpuIndex = Annotated[int, Field(ge=0, le=1023, strict=True)]
Watts = Annotated[float, Field(gt=0, le=MAX_POWER_LIMIT_WATTS, allow_inf_nan=False, strict=True)]

_DESIRED = TypeAdapter(Annotated[dict[GpuIndex, Watts | None], Field(max_length=MAX_DEVICES)])


class PowerReport(BaseModel):
    """The power fields of an agent's heartbeat, sent after it applied desired limits."""

    model_config = ConfigDict(extra="forbid")

    appliedPowerLimits: dict[IndexKey, Watts] = Field(max_length=MAX_DEVICES)
    powerBackend: Literal["off", "simulate", "nvml"]
    powerError: str | None = Field(default=None, max_length=MAX_POWER_ERROR_CHARS)

    def as_status(self) -> dict[str, Any]:
        """The agent's part of ``status.power``."""
        applied = dict(self.appliedPowerLimits)
        return {"applied": applied, "backend": self.powerBackend, "error": self.powerError}


def set_desired_limits(node_name: str, limits: Mapping[int, float | None], *, source: str) -> Resource:
    """Ask the node's agent for these per-GPU limits (watts; None lifts the cap).

    The GPUs named replace what was asked for them; the others keep theirs, so a
    controller may change one GPU without restating the rest. Only controllers call
    this; an unchanged request writes nothing.
    """
    try:
        wanted = _DESIRED.validate_python(dict(limits))
    except ValidationError as exc:
        errors = [
            {"field": ".".join(["limits", *map(str, e["loc"])]), "message": e["msg"]} for e in exc.errors()
        ]
        raise Problem(
            "power limits must map GPU indices to watts (0 < W <= 10000) or None",
            "limits",
            "pass {gpu_index: watts or None}",
            errors,
        ) from None
    if not isinstance(source, str) or not 0 < len(source) <= 64:  # Event.source holds 64
        raise Problem("source must name the controller", "source", "pass source='powercap/NAME'")
    with transaction.atomic():
        node = store.get("Node", node_name, for_update=True)
        status = copy.deepcopy(node.status)
        power = status.setdefault("power", {})
        desired = {**desired_limits(node.status), **{str(i): w for i, w in wanted.items()}}
        if desired == power.get("desired") and power.get("desiredBy") == source:
            return node
        power.update(desired=desired, desiredBy=source, desiredAt=rfc3339(now()))
        store.update_status(node, status)
        described = ", ".join(f"GPU {i}: {'default' if w is None else f'{w:g} W'}" for i, w in wanted.items())
        events.record(node, "PowerLimitsRequested", described or "no change", source=source)
    return node


def desired_limits(status: Mapping[str, Any]) -> dict[str, float | None]:
    """What controllers asked for, by GPU index as a string (the heartbeat's ``powerLimits``)."""
    return dict((status.get("power") or {}).get("desired") or {})


def report_differs(status: Mapping[str, Any], report: Mapping[str, Any]) -> bool:
    """Whether the agent's report (``PowerReport.as_status()``) changes what is stored."""
    stored = status.get("power") or {}
    return any(stored.get(key) != report.get(key) for key in AGENT_KEYS)


def record_report(status: dict[str, Any], report: Mapping[str, Any]) -> None:
    """Store the agent's report in ``status`` (a copy the caller writes)."""
    power = status.setdefault("power", {})
    power.update({key: report.get(key) for key in AGENT_KEYS}, appliedAt=rfc3339(now()))
