"""What a Workload's runtime process is told: its ``spec.config``, built from the owner's spec.

The runtime (``agents/runtimes/serve``, ``agents/runtimes/train``) reads nothing
else from the control plane, so everything it must act on is copied here.
"""

from __future__ import annotations

from typing import Any

from controlplane.models import Resource


def runtime_config(owner: Resource) -> dict[str, Any]:
    """What the Workload's runtime process needs from its owner's spec."""
    spec = owner.spec
    config: dict[str, Any] = {"model": spec.get("model", {})}
    if owner.kind == "TrainingJob":
        config.update(data=spec.get("data", {}), steps=spec.get("steps"), batchSize=spec.get("batchSize"))
    # spec.runtime: only what is set, so the runtime's own defaults apply to the rest.
    config.update({k: v for k, v in (spec.get("runtime") or {}).items() if v is not None})
    return config
