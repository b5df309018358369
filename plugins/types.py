"""The plain data that crosses the plugin boundary.

Plugins receive these (never ORM objects) so a plugin runs the same in the
control plane, an agent, the simulator and a unit test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

PluginKind = Literal["scheduler", "cache", "checkpointer", "powercap"]
PLUGIN_KINDS: tuple[PluginKind, ...] = ("scheduler", "cache", "checkpointer", "powercap")


class NoParams(BaseModel):
    """Parameter schema of a plugin that takes none."""

    model_config = ConfigDict(extra="forbid")


@runtime_checkable
class Plugin(Protocol):
    """What every registered implementation declares."""

    name: ClassVar[str]
    kind: ClassVar[PluginKind]
    description: ClassVar[str]
    Params: ClassVar[type[BaseModel]]


@dataclass(slots=True)  # a snapshot makes one per GPU of the fleet: 10,000 at scale
class Gpu:
    index: int
    type: str
    memory_mib: int
    healthy: bool = True
    # "Kind/name" of the Workload owner using this GPU, or None when free.
    allocated_to: str | None = None

    @property
    def free(self) -> bool:
        return self.healthy and self.allocated_to is None


@dataclass
class NodeView:
    name: str
    cluster: str | None
    labels: dict[str, str]
    ready: bool
    schedulable: bool
    gpus: list[Gpu] = field(default_factory=list)

    def free_gpus(self) -> list[Gpu]:
        return [gpu for gpu in self.gpus if gpu.free]


@dataclass
class FleetView:
    """A snapshot of the nodes a scheduler may place on."""

    nodes: list[NodeView]
    prices: dict[str, float] = field(default_factory=dict)
    # The cluster's power budget (ClusterSpec.powerBudgetWatts), for sizing schedulers.
    power_budget_watts: float | None = None
    # Stored Profile specs (plain dicts); a measured profile beats the built-in estimate.
    profiles: list[dict[str, Any]] = field(default_factory=list)

    def node(self, name: str) -> NodeView | None:
        return next((node for node in self.nodes if node.name == name), None)


@dataclass
class PlacementRequest:
    """Place ``replicas`` more replicas for an owner (a Deployment or TrainingJob)."""

    owner_kind: str
    owner_name: str
    replicas: int
    gpus_per_replica: int = 1
    gpu_types: list[str] = field(default_factory=list)
    gpu_memory_gib: float | None = None
    node_selector: dict[str, str] = field(default_factory=dict)
    cluster: str | None = None
    role: str = "serve"
    spec: dict[str, Any] = field(default_factory=dict)
    # The owner's status.observedWorkload (its traffic measured live), for sizing schedulers
    # to fall back on where the spec declares no rate or lengths; None when not measured.
    observed: dict[str, Any] | None = None


@dataclass
class Placement:
    node: str
    gpus: list[int]
    role: str = "serve"


@dataclass
class PlacementResult:
    placements: list[Placement]
    # Why not every requested replica could be placed, naming what is missing.
    unschedulable: str | None = None


@dataclass
class SchedulePlan:
    """What a sizing scheduler would run for a Deployment, and what the simulator predicts.

    ``replicas`` maps a GPU type to a replica count (each replica uses
    ``gpus_per_replica`` GPUs of that type); ``roles`` does the same per role for
    disaggregated plans. ``supported`` is False when the plan needs something the
    runtime cannot do yet; ``reason`` then says what, and nothing is placed.
    """

    policy: str
    replicas: dict[str, int]
    gpus_per_replica: int = 1
    cost_per_hour: float = 0.0
    predicted: dict[str, Any] = field(default_factory=dict)
    roles: dict[str, dict[str, Any]] = field(default_factory=dict)
    supported: bool = True
    reason: str | None = None
    shortfall: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def total_replicas(self) -> int:
        return sum(self.replicas.values())

    def to_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "policy": self.policy,
            "replicas": dict(self.replicas),
            "gpusPerReplica": self.gpus_per_replica,
            "gpus": self.total_replicas * self.gpus_per_replica
            + sum(r.get("gpus", 0) for r in self.roles.values()),
            "costPerHour": round(self.cost_per_hour, 4),
            "predicted": self.predicted,
            "supported": self.supported,
        }
        for key, value in (("roles", self.roles), ("reason", self.reason), ("shortfall", self.shortfall)):
            if value:
                document[key] = value
        if self.notes:
            document["notes"] = list(self.notes)
        return document

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> SchedulePlan:
        """The plan a controller stored in a Deployment's status (``to_dict``'s output)."""
        return cls(
            policy=document["policy"],
            replicas={str(t): int(n) for t, n in document.get("replicas", {}).items()},
            gpus_per_replica=int(document.get("gpusPerReplica", 1)),
            cost_per_hour=float(document.get("costPerHour", 0.0)),
            predicted=dict(document.get("predicted", {})),
            roles=dict(document.get("roles", {})),
            supported=bool(document.get("supported", True)),
            reason=document.get("reason"),
            shortfall=document.get("shortfall"),
            notes=list(document.get("notes", [])),
        )


class Scheduler(Plugin, Protocol):
    def place(self, *, request: PlacementRequest, fleet: FleetView, params: BaseModel) -> PlacementResult:
        """Choose a node and GPU indices for each requested replica."""
        ...


class SizingScheduler(Scheduler, Protocol):
    """A scheduler that also decides how many replicas of which GPU type a Deployment needs.

    The owner controller asks it for a plan first when the Deployment declares a
    workload rate, then asks ``place`` for the missing replicas of each type.
    """

    def plan(self, *, request: PlacementRequest, fleet: FleetView, params: BaseModel) -> SchedulePlan:
        """Size the Deployment in ``request.spec`` on ``fleet``; never mutates the fleet."""
        ...
