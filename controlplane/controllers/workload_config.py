"""A Workload as its owner's controller writes it: name, labels, spec, and its ``spec.config``.

The runtime (``agents/runtimes/serve``, ``agents/runtimes/train``, ``agents/runtimes/route``)
reads nothing else from the control plane, so everything it must act on is copied here: a
policy name is resolved to its plugin and validated parameters now, because the node has no
database to look a Policy up in.

Decided in issue 11: **a Deployment's running Workloads follow its spec.** Before, a
Workload's config was written once, at placement, so a new cache policy, API key or runtime
setting reached only replicas placed afterwards. Now each pass compares every Workload's
``spec.config`` with what the owner's spec says (:func:`follow_spec`, and the router's own
in ``routers.py``) and writes the new one; the spec change bumps the Workload's generation,
which is what makes its agent restart it with the new config. Replicas are restarted one at
a time, and only while all the others serve (a stale replica that serves nothing is
restarted at once), so a Deployment of several replicas keeps serving through the change
and a config that does not come up stops the roll-out after one replica. The router is
restarted at once: there is one, and it starts in a moment. A TrainingJob's Workload keeps
the config it started with: a new config would restart it, and a restart costs the steps
since its last checkpoint (the runtime resumes from that, or from ``resumeFrom``).
"""

from __future__ import annotations

from typing import Any

from common.specs import CheckpointSpec
from controlplane import events, store
from controlplane.conditions import is_true
from controlplane.models import Resource
from controlplane.policies import PolicyProblem, resolve
from plugins.prefix_hash import BLOCK_SIZE
from plugins.types import Placement

OWNER_LABEL = "flotilla.dev/owner"
REPLICA_LABEL = "flotilla.dev/replica"
ROLE_LABEL = "flotilla.dev/role"
SOURCE = "owner-controller"
# Tokens per KV-cache block, the engine's and the router's (plugins/prefix_hash.py): both
# must cut prompts the same way to name blocks with the same chained hashes.
ROUTER_BLOCK_SIZE = BLOCK_SIZE


def workload_name(owner: Resource, role: str, index: int) -> str:
    name = f"{owner.name}-{role}-{index}"
    if len(name) <= 63:
        return name
    return f"{owner.name[:40]}-{str(owner.uid)[:8]}-{role}-{index}"[:63]


def create_workload(
    owner: Resource,
    name: str,
    placement: Placement,
    *,
    runtime: str,
    config: dict[str, Any],
    labels: dict[str, str],
    executor: dict[str, str],
    status: dict[str, Any] | None = None,
) -> Resource:
    """A new Workload of ``owner`` bound where ``placement`` says, owned (and so collected) by it."""
    return store.create(
        "Workload",
        name,
        {
            "owner": {"kind": owner.kind, "name": owner.name, "uid": str(owner.uid)},
            "role": placement.role,
            "nodeName": placement.node,
            "gpus": placement.gpus,
            "runtime": runtime,
            "config": config,
            # The node's Cluster says who runs it (controlplane/kube/pods.py).
            **executor,
        },
        labels={OWNER_LABEL: owner.name, **labels},
        owner_references=[
            {"kind": owner.kind, "name": owner.name, "uid": str(owner.uid), "controller": True}
        ],
        status=status,
    )


def runtime_config(owner: Resource) -> dict[str, Any]:
    """What the Workload's runtime process needs from its owner's spec."""
    spec = owner.spec
    config: dict[str, Any] = {"model": spec.get("model", {})}
    if owner.kind == "TrainingJob":
        config.update(data=spec.get("data", {}), steps=spec.get("steps"), batchSize=spec.get("batchSize"))
        checkpoint = CheckpointSpec.model_validate(spec.get("checkpoint") or {})
        if checkpoint.policy and (chosen := plugin_choice("checkpointer", checkpoint.policy)):
            config["checkpoint"] = {**chosen, "everySteps": checkpoint.everySteps}
        if spec.get("resumeFrom"):  # the runtime uses it only while the job has no checkpoint of its own
            config["resumeFrom"] = spec["resumeFrom"]
    else:
        config.update(_serving_config(owner))
    # spec.runtime: only what is set, so the runtime's own defaults apply to the rest.
    config.update({k: v for k, v in (spec.get("runtime") or {}).items() if v is not None})
    return config


def router_config(owner: Resource) -> dict[str, Any]:
    """The router's config: the model (to tokenize as the replicas do), the name the replicas
    serve it under, the cache plugin that chooses a replica (absent: round-robin), the API
    key digests, and the block size its prefix hashes must share with the engine."""
    model = owner.spec.get("model", {})
    # The serving runtime's name for the model when its config names none (serve/__main__.py).
    config: dict[str, Any] = {"model": model, "name": model.get("source", "")}
    config.update(_serving_config(owner))
    config["blockSize"] = ROUTER_BLOCK_SIZE
    return config


def _serving_config(owner: Resource) -> dict[str, Any]:
    """What replicas and router share: the cache choice and the API key digests, when set."""
    config: dict[str, Any] = {}
    if (name := (owner.spec.get("policies") or {}).get("cache")) and (chosen := plugin_choice("cache", name)):
        config["cache"] = chosen
    # Digests only: the spec model replaced every plain key before it was stored (common/apikeys.py).
    if keys := (owner.spec.get("serving") or {}).get("apiKeys"):
        config["apiKeys"] = list(keys)
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


def reconfigure(workload: Resource, config: dict[str, Any]) -> bool:
    """Give ``workload`` this config (a new generation: its agent restarts it); False if it has it."""
    if workload.spec.get("config") == config:
        return False
    return store.update(workload, spec={**workload.spec, "config": config})


def serving(workload: Resource) -> bool:
    """Ready, and for its current spec: a replica just given a new config still shows the
    old process's Ready until its agent reports again."""
    observed = workload.status.get("observedGeneration")
    return is_true(workload.status, "Ready") and observed == workload.generation


def follow_spec(owner: Resource, replicas: list[Resource]) -> list[Resource]:
    """Roll a Deployment's new config out to its replicas (see the module docstring);
    return the ones given it this pass."""
    if owner.kind != "Deployment":
        return []
    wanted = runtime_config(owner)
    live = [w for w in replicas if w.deletion_timestamp is None]
    stale = [w for w in live if w.spec.get("config") != wanted]
    if not stale:
        return []
    now = [w for w in stale if not serving(w)]  # serves nothing: nothing to lose
    if all(serving(w) for w in live):
        now = now or stale[:1]
    for workload in now:
        reconfigure(workload, wanted)
    if now:
        names = ", ".join(f"workload/{w.name}" for w in now)
        left = len(stale) - len(now)
        events.record(
            owner,
            "Reconfigured",
            f"{names} restart with generation {owner.generation} of the spec"
            + (f"; {left} more once these serve" if left else ""),
            source=SOURCE,
        )
    return now
