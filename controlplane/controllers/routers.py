"""A Deployment's router: the one Workload of role ``router`` in front of its replicas.

Clients reach a Deployment at one URL, its ``status.url``; the router there (``python -m
agents.runtimes.route``, run by an agent like any Workload) chooses a replica for each
request with the Deployment's cache plugin. The owner controller (``owners.py``) calls
:func:`converge` once per pass, after placing the replicas. Decided in issue 11:

- **Who gets one.** A Deployment that runs more than one replica (its target, which a
  sizing plan may set above ``spec.replicas``), or one replica with ``spec.policies.cache``
  set (the cache plugin acts in the router). Nothing runs at zero replicas, so neither
  does a router. One that stops needing it has it removed.
- **Placement.** Always by the ``binpack`` scheduler, asked for one replica of no GPU
  (``sizing.router_request``), honouring the Deployment's cluster and nodeSelector but
  not its gpuTypes or memory: those describe a replica's GPUs. Not the Deployment's own
  scheduler: the sizing ones (melange, distserve) size GPU replicas, and a router is no
  replica. Binpack's best fit puts it on the eligible node with the least free GPU
  memory, so it leaves whole nodes free for GPU replicas; any Ready, schedulable node
  will do, a CPU-only one included.
- **Naming.** ``workload_name(owner, "router", 0)`` (``chat-router-0``), labelled with
  its owner and ``flotilla.dev/role: router``, owned by the Deployment like a replica: the
  finalizer path (owners._finalize) deletes it with the rest, and a lost node replaces it
  by the replicas' rule (owners._drop_lost sees every owned Workload).
- **Not a replica.** :func:`split` takes it out before any replica count, GPU-type group,
  endpoint list or scale-down: ``status.replicas`` and ``status.endpoints`` are the
  replicas'; ``status.placements`` lists it with its role.
- **Its backends.** ``status.backends`` (``[{name, url}]`` of the Ready serve replicas,
  in replica order) is written by this controller, only when it changed; the router
  watches its own Workload for it. It is a controller-owned key (:data:`CONTROLLER_KEYS`):
  an agent's status PUT of the router keeps it (controlplane/api.py).
- **Its config** (``workload_config.router_config``) follows the Deployment's spec at
  once: a changed cache policy or API key restarts the router with it.
- **Not under the Kubernetes executor (yet).** A router watches its Workload with its
  node's agent token, and a Pod made by the Kubernetes executor has none; so a
  Deployment whose router would run there gets none, says so once (``RouterUnsupported``),
  and is served at its replicas' ``status.endpoints`` as before.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, NamedTuple

from common.specs import DeploymentSpec
from controlplane import events, store
from controlplane.conditions import is_true
from controlplane.controllers.sizing import OwnerSpec, router_request
from controlplane.controllers.workload_config import (
    ROLE_LABEL,
    SOURCE,
    create_workload,
    reconfigure,
    router_config,
    workload_name,
)
from controlplane.kube.pods import executor_spec
from controlplane.models import Resource
from plugins import manager
from plugins.types import FleetView, PlacementRequest

ROLE = "router"
RUNTIME = "route"
SCHEDULER = "binpack"
BACKENDS = "backends"
# The router Workload's status keys that only this controller writes.
CONTROLLER_KEYS = (BACKENDS,)


class Router(NamedTuple):
    """What this pass left of the router: whether the Deployment needs one, the Workload
    (None while it is unplaced, or its old one still stops), and why it is unplaced."""

    wanted: bool
    workload: Resource | None = None
    problem: str | None = None

    @property
    def ready(self) -> bool:
        return self.workload is not None and is_true(self.workload.status, "Ready")

    @property
    def endpoint(self) -> str | None:
        return self.workload.status.get("endpoint") if self.ready and self.workload is not None else None


def is_router(workload: Resource) -> bool:
    return workload.spec.get("role") == ROLE


def split(workloads: list[Resource]) -> tuple[list[Resource], list[Resource]]:
    """(routers, replicas): an owner's Workloads, the router taken out of the replicas."""
    return [w for w in workloads if is_router(w)], [w for w in workloads if not is_router(w)]


def wanted(spec: OwnerSpec, desired: int) -> bool:
    """Whether an owner that runs ``desired`` replicas needs a router."""
    if not isinstance(spec, DeploymentSpec) or desired < 1:
        return False
    return desired > 1 or bool(spec.policies.cache)


def backends(replicas: list[Resource]) -> list[dict[str, str]]:
    """The router's ``status.backends``: the serve replicas that are Ready, with their endpoints."""
    return [
        {"name": w.name, "url": w.status["endpoint"]}
        for w in replicas
        if w.spec.get("role") == "serve"
        and w.deletion_timestamp is None
        and is_true(w.status, "Ready")
        and w.status.get("endpoint")
    ]


def converge(
    owner: Resource,
    spec: OwnerSpec,
    desired: int,
    routers: list[Resource],
    running: list[Resource],
    placing: Callable[[], FleetView],
) -> Router:
    """Keep exactly one router while ``owner`` needs one for ``desired`` replicas (placed on
    ``placing()`` when it lacks it), none otherwise; bring its config and its backends
    (the Ready ones of ``running``) up to date."""
    if not wanted(spec, desired):
        why = "scaled to zero" if desired < 1 else "one replica and no cache policy"
        _remove(owner, routers, why)
        return Router(False)
    assert isinstance(spec, DeploymentSpec)
    name = workload_name(owner, ROLE, 0)
    current = next((w for w in routers if w.name == name and w.deletion_timestamp is None), None)
    _remove(owner, [w for w in routers if w is not current], "replaced")
    if current is None:
        if store.find("Workload", name) is not None:
            return Router(True)  # the old one is still stopping (a Pod's finalizer): wait for it
        return _place(owner, spec, name, running, placing)
    reconfigure(current, router_config(owner))
    _set_backends(current, backends(running))
    return Router(True, current)


def _place(
    owner: Resource,
    spec: DeploymentSpec,
    name: str,
    running: list[Resource],
    placing: Callable[[], FleetView],
) -> Router:
    scheduler = manager.get("scheduler", SCHEDULER)
    request = router_request(owner, spec, ROLE)
    view = placing()
    result = scheduler.place(request=request, fleet=view, params=scheduler.Params())
    if not result.placements:
        return Router(True, None, _unplaced(request))
    placement = result.placements[0]
    node = view.node(placement.node)
    executor = executor_spec(node.cluster if node is not None else None)
    if executor.get("executor") == "kubernetes":
        events.record(
            owner,
            "RouterUnsupported",
            f"no router: node {placement.node} runs Workloads under the Kubernetes executor, which cannot "
            "run one yet; clients use status.endpoints",
            type_="Warning",
            source=SOURCE,
        )
        return Router(False)
    workload = create_workload(
        owner,
        name,
        placement,
        runtime=RUNTIME,
        config=router_config(owner),
        labels={ROLE_LABEL: ROLE},
        executor=executor,
        status={BACKENDS: backends(running)},
    )
    events.record(
        owner,
        "RouterPlaced",
        f"placed router workload/{name} on {placement.node} (no GPU) with {scheduler.name}",
        source=SOURCE,
    )
    return Router(True, workload)


def _unplaced(request: PlacementRequest) -> str:
    where = f" in cluster {request.cluster}" if request.cluster else ""
    selector = ",".join(f"{k}={v}" for k, v in request.node_selector.items())
    matching = f" matching nodeSelector {selector}" if selector else ""
    return f"router unplaced: no ready, schedulable node{where}{matching}"


def _remove(owner: Resource, routers: list[Resource], why: str) -> None:
    for router in routers:
        if router.deletion_timestamp is not None:
            continue  # already going
        store.request_delete(router)
        events.record(owner, "RouterRemoved", f"removed router workload/{router.name}: {why}", source=SOURCE)


def _set_backends(router: Resource, found: list[dict[str, str]]) -> None:
    if router.status.get(BACKENDS) == found:
        return
    status: dict[str, Any] = copy.deepcopy(router.status)
    status[BACKENDS] = found
    store.update_status(router, status)
