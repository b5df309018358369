"""The resource kinds: envelope rules and pydantic spec models.

Pure Python (pydantic only) so that agents, plugins, the simulator and unit
tests import it without Django. Field names are the API contract (DESIGN §2):
later work adds fields and never renames them.

The fields that name a Policy (``spec.policies.*``, ``spec.checkpoint.policy``) and
``PolicySpec.type`` come from ``plugins.types.PLUGIN_KIND_TABLE``: the one import the
ground floor makes from above it, allowed because ``plugins.types`` imports nothing
from Flotilla at run time. A kind added there gets its spec fields here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    create_model,
    field_validator,
    model_validator,
)

from common import apikeys
from plugins.types import PluginKind, selectors

API_VERSION = "flotilla.dev/v1"
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
NAME_MAX = 63
LABEL_KEY_RE = re.compile(r"^([a-z0-9.-]{1,253}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
WORKLOAD_FINALIZER = "flotilla.dev/workloads"


def name_problem(name: Any) -> str | None:
    """Why ``name`` is not a DNS-1123 label, or None when it is one."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty string"
    if len(name) > NAME_MAX:
        return f"must be at most {NAME_MAX} characters (is {len(name)})"
    if not NAME_RE.match(name):
        return (
            "must be a DNS-1123 label: lower-case letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return None


def _check_name(value: str | None) -> str | None:
    if value is not None and (problem := name_problem(value)):
        raise ValueError(f"{value!r} {problem}")
    return value


def _check_labels(labels: dict[str, str]) -> dict[str, str]:
    if len(labels) > 64:
        raise ValueError("at most 64 labels are allowed")
    for key, value in labels.items():
        if not LABEL_KEY_RE.match(key):
            raise ValueError(f"label key {key!r} is not valid; use letters, digits, '-', '_', '.'")
        if not isinstance(value, str) or not LABEL_VALUE_RE.match(value):
            raise ValueError(
                f"label {key}={value!r} is not valid; values are strings of at most 63 "
                "letters, digits, '-', '_', '.'"
            )
    return labels


class Spec(BaseModel):
    """Base for every spec part: unknown fields are errors, not silently dropped."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


Name = Annotated[str, Field(max_length=NAME_MAX)]
GpuType = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]


# --- shared parts -----------------------------------------------------------------

# Power priority (issue 13): who keeps power when a Cluster's budget is short. A name or an
# integer 0-100; higher keeps its power longer. The power-cap controllers cap ``batch``
# (training's default) first, ``normal`` (serving's default) next and ``critical`` last.
PRIORITY_NAMES: dict[str, int] = {"batch": 10, "normal": 50, "critical": 100}
PRIORITY_MAX = 100
Priority = Annotated[
    Annotated[int, Field(ge=0, le=PRIORITY_MAX, strict=True)] | Literal["batch", "normal", "critical"],
    Field(
        description="Power priority: batch, normal, critical or an integer 0-100 (higher keeps "
        "its power longer when the Cluster's power budget is short)"
    ),
]
DEFAULT_PRIORITY: dict[str, str] = {"Deployment": "normal", "TrainingJob": "batch"}


def priority_value(value: Any, kind: str = "Deployment") -> int:
    """The number a spec's ``priority`` stands for (its kind's default when unset or unreadable)."""
    if value is None:
        value = DEFAULT_PRIORITY.get(kind, "normal")
    if isinstance(value, str):
        return PRIORITY_NAMES.get(value, PRIORITY_NAMES["normal"])
    if isinstance(value, int) and not isinstance(value, bool):
        return max(0, min(PRIORITY_MAX, value))
    return PRIORITY_NAMES["normal"]


class ModelSource(Spec):
    source: str = Field(
        min_length=1,
        max_length=1024,
        description="builtin:NAME, or path:/local/weights (safetensors file or directory)",
    )
    config: dict[str, Any] = Field(default_factory=dict)
    tokenizer: str | None = Field(
        default=None,
        max_length=1024,
        description="builtin:bytes (the default) or path:/local/tokenizer.json (Hugging Face format)",
    )

    @field_validator("source")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not value.startswith(("builtin:", "path:")):
            raise ValueError("must start with 'builtin:' or 'path:' (e.g. builtin:tiny-llama)")
        return value

    @field_validator("tokenizer")
    @classmethod
    def _known_tokenizer(cls, value: str | None) -> str | None:
        if value is not None and value != "builtin:bytes" and not value.startswith("path:/"):
            raise ValueError("must be builtin:bytes or path:/absolute/path/tokenizer.json")
        return value


class Resources(Spec):
    gpusPerReplica: int = Field(default=1, ge=1, le=64)
    gpuTypes: list[GpuType] = Field(default_factory=list, max_length=32)
    gpuMemoryGiB: float | None = Field(default=None, gt=0, le=4096)
    nodeSelector: dict[str, str] = Field(default_factory=dict)

    _labels = field_validator("nodeSelector")(classmethod(lambda cls, v: _check_labels(v)))


class Slo(Spec):
    ttftMs: float | None = Field(default=None, gt=0)
    tpotMs: float | None = Field(default=None, gt=0)


class LengthHistogram(Spec):
    """Share of requests per (input length × output length) bucket, for the sizing schedulers.

    Edges are upper bounds in tokens: a request falls in the first bucket whose edge
    is at least its length; the last bucket also takes everything longer.
    """

    inputEdges: list[Annotated[int, Field(ge=1)]] = Field(min_length=1, max_length=64)
    outputEdges: list[Annotated[int, Field(ge=1)]] = Field(min_length=1, max_length=64)
    fractions: list[list[Annotated[float, Field(ge=0)]]] = Field(
        min_length=1, max_length=64, description="rows: input buckets, columns: output buckets"
    )

    @field_validator("inputEdges", "outputEdges")
    @classmethod
    def _increasing(cls, edges: list[int]) -> list[int]:
        if any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
            raise ValueError(f"edges must increase strictly, got {edges}")
        return edges

    @model_validator(mode="after")
    def _shape(self) -> LengthHistogram:
        rows, cols = len(self.inputEdges), len(self.outputEdges)
        if len(self.fractions) != rows or any(len(row) != cols for row in self.fractions):
            raise ValueError(f"fractions must have {rows} rows (inputEdges) of {cols} values (outputEdges)")
        total = sum(map(sum, self.fractions))
        if abs(total - 1) > 1e-3:
            raise ValueError(f"fractions must sum to 1, they sum to {total:.4f}")
        return self


class ServingWorkload(Spec):
    requestsPerSecond: float | None = Field(default=None, ge=0)
    inputTokens: int | None = Field(default=None, ge=1)
    outputTokens: int | None = Field(default=None, ge=1)
    histogram: LengthHistogram | None = Field(
        default=None, description="lengths as a histogram; inputTokens/outputTokens are one bucket otherwise"
    )
    sharedPrefixTokens: int | None = Field(
        default=None,
        ge=0,
        description="prompt tokens a request shares with earlier ones (a system prompt, the conversation "
        "so far): the simulator counts them as prefix-cache hits when the cache policy reuses prefixes",
    )


# The name of a Policy, or of a plugin run with its defaults (controlplane/policies.py).
PolicyName = Annotated[Name | None, AfterValidator(_check_name)]


def _policies_model(model_name: str, owner: str) -> type[Spec]:
    """``owner``'s ``spec.policies``: one optional name per kind the kinds table lets it select there."""
    prefix = "spec.policies."
    fields: dict[str, Any] = {
        selector.path.removeprefix(prefix): (PolicyName, None)
        for _, selector in selectors(owner)
        if selector.path.startswith(prefix)
    }
    return create_model(model_name, __base__=Spec, __module__=__name__, **fields)


DeploymentPolicies = _policies_model("DeploymentPolicies", "Deployment")  # scheduler, cache
ClusterPolicies = _policies_model("ClusterPolicies", "Cluster")  # scheduler, powercap
TrainingPolicies = _policies_model("TrainingPolicies", "TrainingJob")  # scheduler


class CheckpointSpec(Spec):
    # The checkpointer kind's selector in the kinds table (spec.checkpoint.policy).
    policy: PolicyName = None
    everySteps: int = Field(default=100, ge=1)


class DataSource(Spec):
    source: str = Field(min_length=1, max_length=1024, description="builtin:NAME or path:/data")
    config: dict[str, Any] = Field(default_factory=dict)


class OwnerRef(Spec):
    kind: Literal["Deployment", "TrainingJob"]
    name: Name
    uid: str | None = None


# --- kinds ------------------------------------------------------------------------


class ClusterSpec(Spec):
    gpuPrices: dict[GpuType, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)
    powerBudgetWatts: float | None = Field(default=None, gt=0)
    executor: Literal["agent", "kubernetes"] = "agent"
    policies: ClusterPolicies = Field(default_factory=ClusterPolicies)


class NodeSpec(Spec):
    cluster: Name | None = None
    unschedulable: bool = False
    labels: dict[str, str] = Field(default_factory=dict)

    _labels = field_validator("labels")(classmethod(lambda cls, v: _check_labels(v)))
    _names = field_validator("cluster")(classmethod(lambda cls, v: _check_name(v)))


class PolicySpec(Spec):
    type: PluginKind
    plugin: Name
    params: dict[str, Any] = Field(default_factory=dict)


class ServeRuntime(Spec):
    """Settings passed to the serving runtime; unset ones take the runtime's defaults."""

    maxBatch: int | None = Field(default=None, ge=1, le=1024)
    kvCacheBlocks: int | None = Field(default=None, ge=1, le=10_000_000)
    kvCacheBytes: int | None = Field(default=None, ge=1024)
    drainSeconds: float | None = Field(default=None, ge=0, le=3600)


class TrainRuntime(Spec):
    """Settings passed to the training runtime; unset ones take the runtime's defaults."""

    seqLen: int | None = Field(default=None, ge=2, le=1_048_576)
    learningRate: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = Field(default=None, ge=0)


def _api_keys(keys: list[str]) -> list[str]:
    try:
        return list(dict.fromkeys(apikeys.normalize(k) for k in keys))
    except ValueError as exc:
        raise ValueError(str(exc)) from None


class ServingSpec(Spec):
    """How clients reach the Deployment: its router (agents/runtimes/route)."""

    apiKeys: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=apikeys.MAX_KEY_CHARS)]],
        AfterValidator(_api_keys),
    ] = Field(
        default_factory=list,
        max_length=apikeys.MAX_KEYS,
        description="keys a client must send as 'Authorization: Bearer KEY'; stored as sha256 digests. "
        "Empty: serving is open",
    )


class DeploymentSpec(Spec):
    model: ModelSource
    replicas: int = Field(default=1, ge=0, le=4096)
    resources: Resources = Field(default_factory=Resources)
    slo: Slo = Field(default_factory=Slo)
    workload: ServingWorkload = Field(default_factory=ServingWorkload)
    policies: DeploymentPolicies = Field(default_factory=DeploymentPolicies)
    runtime: ServeRuntime = Field(default_factory=ServeRuntime)
    serving: ServingSpec = Field(default_factory=ServingSpec)
    cluster: Name | None = None
    priority: Priority = "normal"
    disaggregation: Literal["off", "auto"] = Field(
        default="off",
        description="auto: the distserve scheduler plans separate prefill and decode replicas",
    )

    _names = field_validator("cluster")(classmethod(lambda cls, v: _check_name(v)))


class TrainingJobSpec(Spec):
    model: ModelSource
    data: DataSource
    steps: int = Field(ge=1)
    batchSize: int = Field(default=8, ge=1)
    resources: Resources = Field(default_factory=Resources)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    resumeFrom: str | None = Field(
        default=None,
        max_length=1024,
        description="a checkpoint directory (absolute path on the node, e.g. "
        "/data/ckpt/pretrain/step-00000100) to start from while the job has no checkpoint of its own",
    )
    policies: TrainingPolicies = Field(default_factory=TrainingPolicies)
    runtime: TrainRuntime = Field(default_factory=TrainRuntime)
    cluster: Name | None = None
    priority: Priority = "batch"

    _names = field_validator("cluster")(classmethod(lambda cls, v: _check_name(v)))

    @field_validator("resumeFrom")
    @classmethod
    def _absolute_checkpoint(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("/") or "\x00" in value):
            raise ValueError(
                f"must be an absolute path to a checkpoint directory on the node, such as "
                f"/data/checkpoints/pretrain/step-00000100 (got {value[:80]!r})"
            )
        return value


class PrefillLatency(Spec):
    """Prefill time of one batch: baseMs + msPerToken·t + msPerTokenSquared·t² for t batch tokens."""

    baseMs: float = Field(ge=0)
    msPerToken: float = Field(ge=0)
    msPerTokenSquared: float = Field(default=0.0, ge=0)


class DecodeLatency(Spec):
    """One decode step: baseMs + msPerSequence·batch + msPerContextToken·(tokens in the batch's KV cache)."""

    baseMs: float = Field(ge=0)
    msPerSequence: float = Field(ge=0)
    msPerContextToken: float = Field(ge=0)


class ProfileSpec(Spec):
    """A latency model of one serving replica of one model shape on one GPU type.

    ``flotilla profile`` writes ``measured`` ones; the simulator's roofline
    ``estimated`` ones are built in and never stored. A stored profile takes
    precedence over the estimate for the same gpuType, model and tensorParallel.
    """

    gpuType: GpuType
    model: str = Field(min_length=1, max_length=128, description="the model shape key (flotilla profile)")
    source: Literal["measured", "estimated"] = "measured"
    tensorParallel: int = Field(default=1, ge=1, le=64)
    prefill: PrefillLatency
    decode: DecodeLatency
    kvCapacityTokens: int = Field(ge=1)
    maxBatch: int = Field(ge=1, le=4096)
    blockSize: int = Field(default=16, ge=1, le=4096)
    powerWatts: float = Field(default=0.0, ge=0)
    measuredOn: str | None = Field(
        default=None, max_length=253, description="host and device it was measured on"
    )
    fitErrorPercent: float | None = Field(
        default=None, ge=0, description="mean error of the fit on its samples"
    )


class WorkloadSpec(Spec):
    owner: OwnerRef
    role: Literal["serve", "prefill", "decode", "train", "router"]
    nodeName: Name
    gpus: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list, max_length=64)
    runtime: str = Field(default="serve", max_length=64)
    config: dict[str, Any] = Field(default_factory=dict)
    # Who runs it, copied from the node's Cluster at placement: the node's agent as a
    # subprocess, or the Kubernetes executor as a Pod (controlplane/kube/pods.py).
    executor: Literal["agent", "kubernetes"] = "agent"


class Device(BaseModel):
    """A device an agent reports. Agents may add fields (name, uuid, power limits);
    the ones schedulers rely on are checked so one bad report cannot break placement."""

    model_config = ConfigDict(extra="allow")

    index: int = Field(ge=0, le=1023)
    type: GpuType
    memoryMiB: int = Field(default=0, ge=0)
    healthy: bool = True


MAX_DEVICES = 256
# The agent protocol's power fields (docs/agent.md, "Power limits"), checked by both ends:
# no board takes a limit this high, so a bigger number is a unit mistake (milliwatts for watts).
MAX_POWER_LIMIT_WATTS = 10_000.0
MAX_POWER_ERROR_CHARS = 1000
# How much checkpoint history a training Workload's status and its TrainingJob's keep: the
# agent (agents/supervisor.py) and the controller (controllers/checkpoints.py) cut alike.
CHECKPOINTS_KEPT = 20
REJECTED_CHECKPOINTS_KEPT = 10
STEP_TIMES_KEPT = 200


class Metadata(Spec):
    """The part of metadata an operator writes; the server owns the rest."""

    name: Name
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    resourceVersion: str | None = None
    # Server-owned fields are accepted (so `get -o yaml | apply` round-trips) and ignored.
    uid: str | None = None
    generation: int | None = None
    creationTimestamp: str | None = None
    deletionTimestamp: str | None = None
    finalizers: list[str] | None = None
    ownerReferences: list[dict[str, Any]] | None = None

    _labels = field_validator("labels")(classmethod(lambda cls, v: _check_labels(v)))
    _names = field_validator("name")(classmethod(lambda cls, v: _check_name(v)))


# --- the registry of kinds ----------------------------------------------------------


@dataclass(frozen=True)
class KindInfo:
    kind: str
    plural: str
    spec_model: type[Spec]
    # Kinds whose controllers own Workloads get a finalizer so that deletion
    # waits until the Workloads are gone.
    finalizer: str | None = None


KINDS: dict[str, KindInfo] = {
    info.kind: info
    for info in (
        KindInfo("Cluster", "clusters", ClusterSpec),
        KindInfo("Node", "nodes", NodeSpec),
        KindInfo("Policy", "policies", PolicySpec),
        KindInfo("Deployment", "deployments", DeploymentSpec, WORKLOAD_FINALIZER),
        KindInfo("TrainingJob", "trainingjobs", TrainingJobSpec, WORKLOAD_FINALIZER),
        KindInfo("Workload", "workloads", WorkloadSpec),
        KindInfo("Profile", "profiles", ProfileSpec),
    )
}
BY_PLURAL: dict[str, KindInfo] = {info.plural: info for info in KINDS.values()}


def kind_for(word: str) -> KindInfo | None:
    """Resolve 'deployments', 'deployment', 'Deployment' or 'deploy' to a kind."""
    lowered = word.lower()
    for info in KINDS.values():
        if lowered in {info.plural, info.kind.lower()}:
            return info
    short = {"deploy": "Deployment", "tj": "TrainingJob", "wl": "Workload", "no": "Node"}
    return KINDS.get(short.get(lowered, ""))


def json_schemas() -> dict[str, dict[str, Any]]:
    """Each kind's spec schema, for OpenAPI and for `flotilla plugins`/docs."""
    return {kind: info.spec_model.model_json_schema() for kind, info in KINDS.items()}
