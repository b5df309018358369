"""What a Workload's runtime process is told: its ``spec.config``, built from the owner's spec.

The runtime (``agents/runtimes/serve``, ``agents/runtimes/train``) reads nothing
else from the control plane, so everything it must act on is copied here: a
policy name is resolved to its plugin and validated parameters now, because the
node has no database to look a Policy up in.
"""

from __future__ import annotations

from typing import Any

from common.specs import CheckpointSpec
from controlplane.models import Resource
from controlplane.policies import PolicyProblem, resolve


def runtime_config(owner: Resource) -> dict[str, Any]:
    """What the Workload's runtime process needs from its owner's spec."""
    spec = owner.spec
    config: dict[str, Any] = {"model": spec.get("model", {})}
    if owner.kind == "TrainingJob":
        config.update(data=spec.get("data", {}), steps=spec.get("steps"), batchSize=spec.get("batchSize"))
        checkpoint = CheckpointSpec.model_validate(spec.get("checkpoint") or {})
        if checkpoint.policy and (chosen := plugin_choice("checkpointer", checkpoint.policy)):
            config["checkpoint"] = {**chosen, "everySteps": checkpoint.everySteps}
    elif name := (spec.get("policies") or {}).get("cache"):
        if chosen := plugin_choice("cache", name):
            config["cache"] = chosen
    # spec.runtime: only what is set, so the runtime's own defaults apply to the rest.
    config.update({k: v for k, v in (spec.get("runtime") or {}).items() if v is not None})
    return config


def plugin_choice(kind: str, name: str) -> dict[str, Any] | None:
    """``{policy, plugin, params}`` for the named policy, or None where it does not resolve.

    Apply refuses a name that resolves to nothing, so None means the Policy was deleted
    or its plugin uninstalled since: the Workload then runs without the choice (the
    runtime's own behaviour) rather than the reconcile crashing on every pass and
    placing nothing at all.
    """
    try:
        impl, params = resolve(kind, name)
    except PolicyProblem:
        return None
    return {"policy": name, "plugin": impl.name, "params": params.model_dump(mode="json")}
