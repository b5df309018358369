"""A Deployment's sizing plan (``status.plan``) as its detail page shows it.

A sizing scheduler (melange, distserve) stores SchedulePlan.to_dict() plus the generation
it was made for. Older plans lack fields, so every read below tolerates absence. A note
that mentions an estimate or a default marks the figures it touches as estimates.
"""

from __future__ import annotations

import math
import re
from typing import Any

from controlplane.models import Resource
from plugins.sim import Slo

ESTIMATE_WORDS = re.compile(r"estimat|default", re.IGNORECASE)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


# (label, key in status.plan.predicted, key in spec.slo, decimals shown)
PLAN_LATENCY = (("TTFT P90", "ttftP90Ms", "ttftMs", 0), ("TPOT P90", "tpotP90Ms", "tpotMs", 1))


def _plan_latency(predicted: dict[str, Any], slo: dict[str, Any]) -> list[dict[str, Any]]:
    """Predicted P90s against the spec's targets. A key present with no value means the
    simulation rejected requests (an unbounded P90); an absent one, an older plan."""
    lines = []
    for label, key, target_key, digits in PLAN_LATENCY:
        value, target = _number(predicted.get(key)), _number(slo.get(target_key))
        css = "" if value is None or target is None else ("ok" if value <= target else "bad")
        line = {"label": label, "value": value, "digits": digits, "target": target, "css": css}
        lines.append({**line, "known": key in predicted})
    return lines


def plan_view(resource: Resource) -> dict[str, Any] | None:
    """status.plan as the detail page shows it, or None when the Deployment has none."""
    plan = resource.status.get("plan")
    if not isinstance(plan, dict) or not plan:
        return None
    texts = [str(n) for n in plan.get("notes") or []]
    notes = [{"text": t, "estimate": bool(ESTIMATE_WORDS.search(t))} for t in texts]
    estimated = [n["text"] for n in notes if n["estimate"]]

    def estimate_for(gpu_type: str) -> str:
        """The estimate notes about one GPU type ("H100: ...", "H100×2: ...")."""
        return "; ".join(t for t in estimated if t.startswith((f"{gpu_type}:", f"{gpu_type}×")))

    per_replica = int(_number(plan.get("gpusPerReplica")) or 1)
    types = [
        {"type": t, "replicas": int(n), "gpus": int(n) * per_replica, "estimate": estimate_for(t)}
        for t, n in sorted(_dict(plan.get("replicas")).items())
        if _number(n) is not None
    ]
    roles = [
        {**r, "role": role, "estimate": estimate_for(str(r.get("gpuType", "")))}
        for role, r in _dict(plan.get("roles")).items()
        if isinstance(r, dict)
    ]
    gpus = _number(plan.get("gpus"))
    if gpus is None and (types or roles):
        gpus = sum(t["gpus"] for t in types) + sum(_number(r.get("gpus")) or 0 for r in roles)
    predicted = _dict(plan.get("predicted"))
    attainment = _number(predicted.get("sloAttainment"))
    goal = Slo(None, None).attainment
    generation = plan.get("generation")
    return {
        "policy": plan.get("policy") or "unknown",
        "generation": generation,
        "stale": generation is not None and generation != resource.generation,
        "types": types,
        "roles": roles,
        "gpus_per_replica": per_replica,
        "gpus": gpus,
        "cost": _number(plan.get("costPerHour")),
        "cost_estimate": "; ".join(t for t in estimated if "price" in t.lower()),
        "latency": _plan_latency(predicted, resource.spec.get("slo") or {}),
        "attainment": None if attainment is None else attainment * 100,
        "goal": goal * 100,
        "attainment_css": "" if attainment is None else ("ok" if attainment >= goal else "bad"),
        "simulated": _number(predicted.get("simulatedRequests")),
        "goodput_per_gpu": _number(predicted.get("goodputPerGpu")),
        "power_watts": _number(predicted.get("powerWatts")),
        "supported": plan.get("supported", True) is not False,
        "reason": plan.get("reason") or "",
        "shortfall": plan.get("shortfall") or "",
        "notes": notes,
        "estimates": bool(estimated),
    }
