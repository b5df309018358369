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


@dataclass
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


class Scheduler(Plugin, Protocol):
    def place(self, *, request: PlacementRequest, fleet: FleetView, params: BaseModel) -> PlacementResult:
        """Choose a node and GPU indices for each requested replica."""
        ...
