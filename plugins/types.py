"""The plugin contract: the plain data that crosses the boundary, a Protocol per kind,
and the one table of kinds.

Plugins receive plain data (never ORM objects) so a plugin runs the same in the
control plane, an agent, the simulator and a unit test. ``PLUGIN_KIND_TABLE`` at the
end is the only place a kind is described (its hook, its Protocol, the spec fields
that select it, its default): the manager, the spec models, apply, the API and the
dashboard all read it, so a fifth kind is one row. At run time this module imports
nothing else from Flotilla (``common.specs`` only for type checkers), which lets
``common.specs`` import the kind names from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:  # for the annotation only: common.specs imports this module at run time
    from common.specs import DeploymentSpec

# The kind names for type checkers; PLUGIN_KIND_TABLE below describes each (a test keeps them equal).
PluginKind = Literal["scheduler", "cache", "checkpointer", "powercap"]


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
    # The owner's validated spec when it is a Deployment (what sizing schedulers size);
    # None for a TrainingJob.
    deployment: DeploymentSpec | None = None
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


@runtime_checkable
class Scheduler(Plugin, Protocol):
    """Places replicas: the control plane's owner controller calls it under the writers' lock."""

    def place(self, *, request: PlacementRequest, fleet: FleetView, params: BaseModel) -> PlacementResult:
        """Choose a node and GPU indices for each requested replica."""
        ...


class SizingScheduler(Scheduler, Protocol):
    """A scheduler that also decides how many replicas of which GPU type a Deployment needs.

    The owner controller asks it for a plan first when the Deployment declares a
    workload rate, then asks ``place`` for the missing replicas of each type.
    """

    def plan(self, *, request: PlacementRequest, fleet: FleetView, params: BaseModel) -> SchedulePlan:
        """Size the Deployment in ``request.deployment`` on ``fleet``; never mutates the fleet."""
        ...


# --- cache: KV-cache eviction, session pinning, request routing (issue 11) ----------------


@dataclass(slots=True)  # one per block of a replica's cache: hundreds of thousands
class CachedBlock:
    """One KV-cache block a serving replica holds, as the eviction policy sees it.

    Times are seconds on the replica's monotonic clock, the same clock as ``now``.
    """

    block_id: int
    # Hash of the tokens up to and including this block, chained from the prefix's
    # hash, so equal prefixes share blocks; None while the block is still filling.
    hash: int | None
    last_used: float
    # Running sequences reading the block; a block with ref_count > 0 is never freed.
    ref_count: int = 0
    # A session pin (from ``pin_seconds``) keeps the block cached until then.
    pinned_until: float = 0.0
    # The multi-turn session whose turn wrote the block, if any.
    session: str | None = None
    # Position of the block in its prefix (0: the first); a deeper block depends on the
    # shallower ones, so among equally recent blocks the deepest goes first.
    depth: int = 0


@dataclass
class SessionTurn:
    """A multi-turn session's turn has just ended; its blocks may be pinned for the next."""

    session: str
    blocks: list[int]
    # Seconds between this session's earlier turns, oldest first (empty on a first turn).
    gaps: list[float] = field(default_factory=list)
    # Share of the cache's blocks in use now (held by running requests or pinned), 0 to 1.
    memory_in_use: float = 0.0
    # Share of the cache's blocks pinned for sessions now, this turn's not counted, 0 to 1.
    pinned_share: float = 0.0
    # Blocks in the replica's cache, so a policy can weigh ``len(blocks)`` against it.
    total_blocks: int = 0


@dataclass
class RouteRequest:
    """A request to route: its prompt as the model's token ids, their chained block hashes
    (``plugins.prefix_hash.block_hashes``, full blocks only) and its session."""

    token_ids: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)
    session: str | None = None
    block_size: int = 16


@dataclass
class ReplicaLoad:
    """One serving replica's load and cache contents, as the router last heard them.

    ``cached_hashes`` is what the replica last reported holding (its ``/cache``) plus what
    the router sent it since, so a prefix the router just routed counts at once."""

    name: str
    url: str
    queued: int = 0
    running: int = 0
    free_blocks: int = 0
    cached_hashes: frozenset[int] = frozenset()
    # Requests the router has in flight to this replica now (its own, exact count).
    in_flight: int = 0

    @property
    def load(self) -> int:
        """Requests ahead of a new one: the router's own in flight, or what the replica
        reported when that is more (other routers, direct clients)."""
        return max(self.in_flight, self.queued + self.running)


@runtime_checkable
class CachePolicy(Plugin, Protocol):
    """Organises a served model's KV cache: what to evict, how long to keep a session's
    blocks, which replica a request goes to. The serving engine calls the first two on
    its own replica; the router calls ``route``. Each call must be quick (it is on the
    request path) and must not keep references to the lists it is given."""

    def reuses_prefixes(self, *, params: BaseModel) -> bool:
        """False: the engine neither looks prompts up in its cache nor keeps finished
        requests' blocks (the no-cache baseline), and never calls ``evict``."""
        ...

    def evict(
        self, *, blocks: list[CachedBlock], needed: int, now: float, total_blocks: int, params: BaseModel
    ) -> list[int]:
        """Ids among ``blocks`` (all with ref_count 0, pinned ones included: whether to break
        a pin is the policy's call) to free now.

        With ``needed > 0`` the engine is short of that many blocks: return up to that
        many (fewer if no more may go; the engine then preempts a running request). With
        ``needed == 0`` (after a request finishes) ``blocks`` are every unreferenced cached
        block and the policy says which to drop at once, e.g. those beyond its capacity
        share of ``total_blocks``."""
        ...

    def pin_seconds(self, *, turn: SessionTurn, params: BaseModel) -> float:
        """How long to keep the turn's blocks pinned for the session's next turn; 0 for not at all."""
        ...

    def route(self, *, request: RouteRequest, replicas: list[ReplicaLoad], params: BaseModel) -> str:
        """The name of the replica (one of ``replicas``, never empty) that should serve ``request``."""
        ...


# --- checkpointer: saving and restoring training state (issue 12) ------------------------


@dataclass
class TrainingState:
    """What a checkpoint holds. Values are whatever the runtime keeps (torch tensors,
    numbers, nested dicts of them), named as in a ``state_dict``."""

    step: int
    model: dict[str, Any] = field(default_factory=dict)
    optimizer: dict[str, Any] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=dict)
    rng: dict[str, Any] = field(default_factory=dict)
    # Where the data stream is, so a restored job does not see the same batches again.
    data: dict[str, Any] = field(default_factory=dict)
    # The run's last state: a multi-level checkpointer writes it to every level, so the job's
    # result is durable however its levels are spaced.
    final: bool = False
    # Set by ``restore``: where this state was found (level, path, bytes; ``seconds`` to find,
    # verify and load it). None for a state the runtime captured.
    origin: CheckpointRecord | None = None


@dataclass
class CheckpointTarget:
    """Where one job's checkpoints go: fast node-local storage first, durable storage after.

    A multi-level checkpointer snapshots to ``local_dir`` and copies on to
    ``durable_dir`` (which survives losing the node); a plain one writes to either.
    ``rejected`` is where ``restore`` says what the runtime should report: each checkpoint it
    passed over, as (path, why), because it did not verify or load (plain data, so the
    contract stays plain).
    """

    owner: str  # "TrainingJob/name"
    local_dir: str
    durable_dir: str | None = None
    rejected: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class CheckpointRecord:
    """One checkpoint that reached one level (or failed to): what the job's status and events
    show. ``seconds`` counts from the ``save`` call, so for the last level it is the time
    until the checkpoint was durable."""

    step: int
    level: str  # "memory" | "local" | "durable"
    path: str
    bytes: int
    seconds: float
    completed_at: float  # Unix time
    error: str | None = None  # set when this level failed; the others may still have it
    skipped: bool = False  # the save was skipped (the previous one still held the host buffers)


@runtime_checkable
class CheckpointHandle(Protocol):
    """A save in progress. The training loop keeps stepping while it runs, so it asks the
    handle before the optimizer changes tensors the save may still be reading."""

    step: int
    done: bool

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the save is durable or ``timeout`` seconds pass; True when it is done."""
        ...

    def before_update(self) -> None:
        """Block only until the tensors the optimizer is about to modify have been copied."""
        ...

    def records(self) -> list[CheckpointRecord]:
        """The levels reached (or failed) since the last call, oldest first."""
        ...


@dataclass
class FinishedSave:
    """The handle of a blocking save: done before ``save`` returned, so nothing waits."""

    step: int
    done: bool = True
    record: CheckpointRecord | None = None

    def wait(self, timeout: float | None = None) -> bool:
        return True

    def before_update(self) -> None:
        return None

    def records(self) -> list[CheckpointRecord]:
        record, self.record = self.record, None
        return [record] if record is not None else []


@runtime_checkable
class Checkpointer(Plugin, Protocol):
    """Saves and restores training state on the agent. ``save`` may return before the
    state is on disk (an asynchronous snapshot); the loop then calls the handle's
    ``before_update`` before each optimizer step, which is where the overhead shows."""

    def save(self, *, state: TrainingState, target: CheckpointTarget, params: BaseModel) -> CheckpointHandle:
        """Start saving ``state``; return a handle to wait on (``FinishedSave`` for a blocking save)."""
        ...

    def restore(self, *, target: CheckpointTarget, params: BaseModel) -> TrainingState | None:
        """The newest complete checkpoint under ``target``, or None when there is none."""
        ...


# --- powercap: GPU power limits under a cluster's budget (issue 13) ----------------------


@dataclass(slots=True)  # one per GPU of a cluster
class GpuPower:
    """One GPU's power as telemetry last saw it, and the range its board accepts."""

    node: str
    index: int
    gpu_type: str
    draw_watts: float
    limit_watts: float
    min_watts: float
    max_watts: float
    # Percent busy (0 to 100) as the agent reports it; None when not reported.
    utilisation: float | None = None
    # "Kind/name" of the Workload owner using the GPU, or None when idle.
    owner: str | None = None
    # Higher keeps its power longer when the budget is short (common.specs.priority_value:
    # batch 10, normal 50, critical 100; 0 for an idle GPU).
    priority: int = 0
    # No telemetry from the node within the controller's window: ``draw_watts`` is then
    # the GPU's current limit (the most it can draw), never zero.
    stale: bool = False


@dataclass
class PowerBudget:
    """A cluster's power budget (ClusterSpec.powerBudgetWatts)."""

    cluster: str
    watts: float


@dataclass
class PowerDecision:
    """The limit each GPU should have, keyed by (node, index); None lifts the cap back to
    the board's default. GPUs left out keep the limit they have. ``notes`` say why, for
    the Cluster's events."""

    limits: dict[tuple[str, int], float | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@runtime_checkable
class PowerCap(Plugin, Protocol):
    """Decides power limits for a cluster's GPUs from its budget and live telemetry. The
    control plane calls it periodically and the agents apply the limits through their
    power backend, so it must be a pure function of what it is given."""

    def decide(self, *, budget: PowerBudget, gpus: list[GpuPower], params: BaseModel) -> PowerDecision:
        """Limits that keep the cluster's draw under ``budget.watts``; lift them when it can."""
        ...


# --- the one table of kinds ----------------------------------------------------------------


@dataclass(frozen=True)
class Selector:
    """A spec field that names a Policy (or a plugin directly) of one kind."""

    owner: str  # the resource kind whose spec has the field: "Deployment"
    path: str  # dotted, from the document's top: "spec.policies.scheduler"

    def read(self, spec: Mapping[str, Any]) -> str | None:
        """The name this field holds in ``spec`` (a stored or parsed spec dict), or None."""
        value: Any = spec
        for part in self.path.split(".")[1:]:
            value = value.get(part) if isinstance(value, Mapping) else None
        return value if isinstance(value, str) and value else None


@dataclass(frozen=True)
class PluginKindInfo:
    kind: PluginKind
    hook: str  # the hookspec that registers implementations (plugins/hookspecs.py)
    protocol: type[Plugin]
    selected_by: tuple[Selector, ...]
    # The plugin used when no selector names one; None: the kind is off unless named.
    default: str | None = None


def _on(path: str, *owners: str) -> tuple[Selector, ...]:
    return tuple(Selector(owner, path) for owner in owners)


PLUGIN_KIND_TABLE: dict[PluginKind, PluginKindInfo] = {
    info.kind: info
    for info in (
        PluginKindInfo(
            "scheduler",
            "register_schedulers",
            Scheduler,
            _on("spec.policies.scheduler", "Deployment", "TrainingJob", "Cluster"),
            default="binpack",
        ),
        PluginKindInfo("cache", "register_caches", CachePolicy, _on("spec.policies.cache", "Deployment")),
        PluginKindInfo(
            "checkpointer",
            "register_checkpointers",
            Checkpointer,
            _on("spec.checkpoint.policy", "TrainingJob"),
        ),
        PluginKindInfo("powercap", "register_powercaps", PowerCap, _on("spec.policies.powercap", "Cluster")),
    )
}
PLUGIN_KINDS: tuple[PluginKind, ...] = tuple(PLUGIN_KIND_TABLE)


def selectors(owner: str | None = None) -> list[tuple[PluginKind, Selector]]:
    """Every (kind, selector) in table order; only those on ``owner``'s spec when given."""
    return [
        (kind, selector)
        for kind, info in PLUGIN_KIND_TABLE.items()
        for selector in info.selected_by
        if owner is None or selector.owner == owner
    ]


def owner_kinds() -> tuple[str, ...]:
    """The resource kinds whose specs name Policies."""
    return tuple(dict.fromkeys(selector.owner for _, selector in selectors()))


def default_plugin(kind: str) -> str | None:
    """The plugin a ``kind`` uses when nothing names one (binpack for scheduler), or None."""
    info = PLUGIN_KIND_TABLE.get(kind)
    return info.default if info is not None else None
