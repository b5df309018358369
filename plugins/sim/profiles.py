"""Latency models of one serving instance: estimated from a roofline, or fitted to measurements.

A :class:`GpuProfile` reduces an instance (one model replica on ``tensor_parallel`` GPUs of one
type) to a few coefficients the simulator can evaluate millions of times cheaply:

- a prefill pass over ``t`` tokens costs ``base + a*t + b*t**2`` ms (the quadratic term is
  causal attention over the prompt);
- a decode step for ``n`` sequences holding ``c`` KV-cache tokens in all costs
  ``base + c_seq*n + d*c`` ms (weights are read once per step, every sequence adds its
  matmul work, every cached token is read once by attention);
- the KV cache holds ``kv_capacity_tokens`` tokens in blocks of ``block_size``.

Both sources produce the same object on purpose: :func:`estimate` fits a roofline (prefill
compute-bound, decode memory-bound) for GPUs nobody has measured, :func:`fit` fits timings the
``flotilla profile`` command measures on the real torch engine, and every consumer (schedulers,
``flotilla plan``, the benchmarks) treats them alike.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Literal

from plugins.sim.hardware import get_hardware

# Roofline assumptions: the share of the published peak a real serving engine reaches.
COMPUTE_EFFICIENCY = 0.5  # large prefill matmuls reach ~50% of dense tensor peak (MFU)
BANDWIDTH_EFFICIENCY = 0.7  # decode streams weights and KV at ~70% of peak HBM bandwidth
USABLE_MEMORY = 0.9  # the rest goes to activations, the CUDA context and fragmentation
POWER_AT_LOAD = 0.8  # a busy serving GPU draws ~80% of its TDP on average
# Per-step fixed cost (kernel launches, the scheduler's own work): small next to the weights.
STEP_OVERHEAD_MS = 0.2
LAUNCH_MS_PER_LAYER = 0.02
ALLREDUCE_LATENCY_MS = 0.015  # one tensor-parallel all-reduce, latency part

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2, "float64": 8}


@dataclass(frozen=True)
class ModelShape:
    """A Llama-style decoder's dimensions; the defaults are ``builtin:tiny-llama``."""

    layers: int = 4
    hidden: int = 256
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 688
    vocab: int = 259
    bytes_per_param: int = 2

    def __post_init__(self) -> None:
        for name in ("layers", "hidden", "heads", "kv_heads", "intermediate", "vocab", "bytes_per_param"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"model shape {name} must be a positive integer, got {value!r}")
        if self.hidden % self.heads:
            raise ValueError(f"model shape hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        if self.heads % self.kv_heads:
            raise ValueError(f"model shape heads ({self.heads}) must divide by kv_heads ({self.kv_heads})")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def params(self) -> int:
        """Total parameters: untied embedding and lm_head, GQA attention, SwiGLU MLP, RMSNorms."""
        d, h = self.head_dim, self.hidden
        attention = h * self.heads * d * 2 + h * self.kv_heads * d * 2  # wq, wo; wk, wv
        mlp = 3 * h * self.intermediate  # gate, up, down
        per_layer = attention + mlp + 2 * h  # + two norms
        return self.layers * per_layer + 2 * self.vocab * h + h  # + embed, lm_head, final norm

    @property
    def weight_bytes(self) -> int:
        return self.params * self.bytes_per_param

    @property
    def kv_bytes_per_token(self) -> int:
        """Keys and values of one token in every layer."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.bytes_per_param

    @property
    def flops_per_token(self) -> int:
        """Matmul FLOPs for one token, 2 per weight; the embedding is a lookup, not a matmul."""
        return 2 * (self.params - self.vocab * self.hidden)

    @property
    def attention_flops_per_context_token(self) -> int:
        """FLOPs one new token spends per cached token it attends to (QK^T and AV, all layers)."""
        return 4 * self.layers * self.heads * self.head_dim

    @property
    def key(self) -> str:
        """A short deterministic id; profiles are stored and looked up by it.

        The head count is in it because it sets the head size and so the KV bytes per token.
        """
        return (
            f"llama-l{self.layers}-h{self.hidden}-a{self.heads}-kv{self.kv_heads}"
            f"-i{self.intermediate}-v{self.vocab}-b{self.bytes_per_param}"
        )

    def to_config(self) -> dict[str, Any]:
        """The Deployment ``spec.model.config`` that has this shape (inverse of from_config)."""
        return {
            "layers": self.layers,
            "hidden": self.hidden,
            "heads": self.heads,
            "kvHeads": self.kv_heads,
            "intermediate": self.intermediate,
            "vocabSize": self.vocab,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        """The shape of a runtime ``ModelConfig`` dict (Deployment ``spec.model.config`` keys).

        Missing keys take the tiny-llama defaults and keys that do not change the shape
        (``maxSeqLen``, ``seed``, ...) are ignored. ``dtype: auto`` counts 2 bytes: on a GPU the
        runtime picks bfloat16 (on a CPU it would be float32 -- pass ``dtype`` explicitly there).
        """
        names = {
            "layers": "layers",
            "hidden": "hidden",
            "heads": "heads",
            "kvHeads": "kv_heads",
            "intermediate": "intermediate",
            "vocabSize": "vocab",
        }
        values: dict[str, int] = {}
        for key, field in names.items():
            if key not in config:
                continue
            value = config[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"model config key {key!r} must be a positive integer, got {value!r}")
            values[field] = value
        if "dtype" in config:
            dtype = config["dtype"]
            if dtype not in DTYPE_BYTES:
                raise ValueError(
                    f"model config key 'dtype' must be one of {sorted(DTYPE_BYTES)}, got {dtype!r}"
                )
            values["bytes_per_param"] = DTYPE_BYTES[dtype]
        try:
            return cls(**values)
        except ValueError as exc:  # divisibility: name the config keys, not our field names
            message = str(exc).replace("kv_heads", "kvHeads").replace("model shape", "model config key")
            raise ValueError(message) from None


SHAPES: dict[str, ModelShape] = {
    "tiny-llama": ModelShape(),
    "llama-3-8b": ModelShape(32, 4096, 32, 8, 14336, 128256),
    "llama-2-13b": ModelShape(40, 5120, 40, 40, 13824, 32000),
    "llama-3-70b": ModelShape(80, 8192, 64, 8, 28672, 128256),
}


@dataclass(frozen=True)
class GpuProfile:
    """Latency and capacity of ONE serving instance (one replica on ``tensor_parallel`` GPUs)."""

    gpu_type: str
    model: str  # ModelShape.key
    source: Literal["estimated", "measured"]
    prefill_base_ms: float
    prefill_ms_per_token: float
    prefill_ms_per_token_sq: float
    decode_base_ms: float
    decode_ms_per_seq: float
    decode_ms_per_context_token: float
    kv_capacity_tokens: int
    max_batch: int
    power_watts: float  # draw at load, per GPU
    tensor_parallel: int = 1
    block_size: int = 16

    def __post_init__(self) -> None:
        if self.source not in ("estimated", "measured"):
            raise ValueError(f"profile source must be 'estimated' or 'measured', got {self.source!r}")
        for name in ("max_batch", "tensor_parallel", "block_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"profile {name} must be >= 1, got {getattr(self, name)}")
        if self.kv_capacity_tokens < 0:
            raise ValueError(f"profile kv_capacity_tokens must be >= 0, got {self.kv_capacity_tokens}")

    @property
    def gpus(self) -> int:
        return self.tensor_parallel

    @property
    def kv_blocks(self) -> int:
        """Whole blocks in the cache: the engine allocates in blocks, never part of one."""
        return self.kv_capacity_tokens // self.block_size

    def prefill_ms(self, batch_tokens: int) -> float:
        return (
            self.prefill_base_ms
            + self.prefill_ms_per_token * batch_tokens
            + (self.prefill_ms_per_token_sq * batch_tokens * batch_tokens)
        )

    def prefill_batch_ms(self, rows: int, width: int) -> float:
        """A padded prefill of ``rows`` prompts of ``width`` tokens, as the engine runs it.

        Matmuls see ``rows * width`` tokens, but attention is per sequence, so the quadratic
        term is charged ``rows * width**2``, not ``(rows * width)**2``. One row is exactly
        :meth:`prefill_ms`.
        """
        tokens = rows * width
        return (
            self.prefill_base_ms
            + self.prefill_ms_per_token * tokens
            + (self.prefill_ms_per_token_sq * tokens * width)
        )

    def decode_ms(self, batch_size: int, context_tokens: int) -> float:
        """One decode step for ``batch_size`` sequences holding ``context_tokens`` KV tokens in all."""
        return (
            self.decode_base_ms
            + self.decode_ms_per_seq * batch_size
            + (self.decode_ms_per_context_token * context_tokens)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "gpuType": self.gpu_type,
            "model": self.model,
            "source": self.source,
            "tensorParallel": self.tensor_parallel,
            "prefill": {
                "baseMs": self.prefill_base_ms,
                "msPerToken": self.prefill_ms_per_token,
                "msPerTokenSquared": self.prefill_ms_per_token_sq,
            },
            "decode": {
                "baseMs": self.decode_base_ms,
                "msPerSequence": self.decode_ms_per_seq,
                "msPerContextToken": self.decode_ms_per_context_token,
            },
            "kvCapacityTokens": self.kv_capacity_tokens,
            "maxBatch": self.max_batch,
            "blockSize": self.block_size,
            "powerWatts": self.power_watts,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GpuProfile:
        """The inverse of :meth:`to_dict`; a ValueError names the first missing or bad key."""
        if not isinstance(data, dict):
            raise ValueError(f"a profile must be a mapping, got {type(data).__name__}")

        def get(path: str, kind: type, default: Any = None) -> Any:
            node: Any = data
            for part in path.split("."):
                if not isinstance(node, dict) or part not in node:
                    if default is not None:
                        return default
                    raise ValueError(f"profile is missing key {path!r}")
                node = node[part]
            if kind is str:
                ok = isinstance(node, str) and node != ""
            elif kind is int:
                ok = isinstance(node, int) and not isinstance(node, bool)
            else:
                ok = isinstance(node, int | float) and not isinstance(node, bool) and math.isfinite(node)
            if not ok or (kind is not str and node < 0):
                raise ValueError(f"profile key {path!r} must be a non-negative {kind.__name__}, got {node!r}")
            return float(node) if kind is float else node

        source = get("source", str)
        if source not in ("estimated", "measured"):
            raise ValueError(f"profile key 'source' must be 'estimated' or 'measured', got {source!r}")
        values = {
            "tensor_parallel": get("tensorParallel", int, 1),
            "max_batch": get("maxBatch", int),
            "block_size": get("blockSize", int, 16),
        }
        for name, value in values.items():
            if value < 1:
                key = {
                    "tensor_parallel": "tensorParallel",
                    "max_batch": "maxBatch",
                    "block_size": "blockSize",
                }
                raise ValueError(f"profile key {key[name]!r} must be >= 1, got {value}")
        return cls(
            gpu_type=get("gpuType", str),
            model=get("model", str),
            source=source,
            prefill_base_ms=get("prefill.baseMs", float),
            prefill_ms_per_token=get("prefill.msPerToken", float),
            prefill_ms_per_token_sq=get("prefill.msPerTokenSquared", float),
            decode_base_ms=get("decode.baseMs", float),
            decode_ms_per_seq=get("decode.msPerSequence", float),
            decode_ms_per_context_token=get("decode.msPerContextToken", float),
            kv_capacity_tokens=get("kvCapacityTokens", int),
            power_watts=get("powerWatts", float),
            **values,
        )


def estimate(gpu_type: str, shape: ModelShape, tensor_parallel: int = 1, max_batch: int = 256) -> GpuProfile:
    """A roofline profile of ``shape`` on ``tensor_parallel`` GPUs of ``gpu_type``.

    Prefill is compute-bound: FLOPs over the achievable tensor throughput, with the time to
    stream the weights once as a floor. A decode step is memory-bound: the weights plus every
    cached token's keys and values read at the achievable bandwidth, with each sequence's
    matmul FLOPs on top. The floor and the slope are *added* rather than maxed so the result
    keeps the linear form of a measured profile; near the ridge point that overestimates by
    at most one weight read (a decode step), which is conservative and small next to TTFT
    targets. With tensor parallelism, FLOPs, bandwidth and memory scale by ``tp`` and every
    layer pays two all-reduces (a latency plus the activation bytes over the interconnect).
    """
    hw = get_hardware(gpu_type)
    if isinstance(tensor_parallel, bool) or not isinstance(tensor_parallel, int) or tensor_parallel < 1:
        raise ValueError(f"tensor_parallel must be a positive integer, got {tensor_parallel!r}")
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    tp = tensor_parallel
    usable = hw.memory_gib * 2**30 * tp * USABLE_MEMORY
    kv_tokens = int((usable - shape.weight_bytes) // shape.kv_bytes_per_token)
    if kv_tokens < 16:
        raise ValueError(
            f"model {shape.key} does not fit on {tp}×{gpu_type}: weights take "
            f"{shape.weight_bytes / 2**30:.1f} GiB of {usable / 2**30:.1f} GiB usable"
        )
    flop_rate = COMPUTE_EFFICIENCY * hw.tflops * 1e12 * tp / 1e3  # FLOP per ms
    byte_rate = BANDWIDTH_EFFICIENCY * hw.memory_bandwidth_gbs * 1e9 * tp / 1e3  # bytes per ms
    overhead = STEP_OVERHEAD_MS + LAUNCH_MS_PER_LAYER * shape.layers
    comm_base = comm_per_token = 0.0
    if tp > 1:
        allreduces = 2 * shape.layers
        ring = 2 * (tp - 1) / tp  # a ring all-reduce moves this multiple of the buffer per GPU
        comm_base = allreduces * ALLREDUCE_LATENCY_MS
        comm_per_token = (
            allreduces * shape.hidden * shape.bytes_per_param * ring / (hw.interconnect_gbs * 1e6)
        )
    weights_ms = shape.weight_bytes / byte_rate
    per_token_ms = shape.flops_per_token / flop_rate + comm_per_token
    attention = shape.attention_flops_per_context_token
    return GpuProfile(
        gpu_type=gpu_type,
        model=shape.key,
        source="estimated",
        prefill_base_ms=weights_ms + overhead + comm_base,
        prefill_ms_per_token=per_token_ms,
        # causal: token p attends to p earlier ones, sum over a prompt of t is ~t**2 / 2
        prefill_ms_per_token_sq=attention / 2 / flop_rate,
        decode_base_ms=weights_ms + overhead + comm_base,
        decode_ms_per_seq=per_token_ms,
        decode_ms_per_context_token=shape.kv_bytes_per_token / byte_rate + attention / flop_rate,
        kv_capacity_tokens=kv_tokens,
        max_batch=max_batch,
        power_watts=POWER_AT_LOAD * hw.tdp_watts,
        tensor_parallel=tp,
    )


def fit(
    gpu_type: str,
    shape: ModelShape,
    prefill_samples: list[tuple[int, float]],
    decode_samples: list[tuple[int, int, float]],
    kv_capacity_tokens: int,
    max_batch: int,
    power_watts: float = 0.0,
    block_size: int = 16,
) -> GpuProfile:
    """A measured profile: least squares over ``(batch_tokens, ms)`` prefill samples and
    ``(batch_size, context_tokens, ms)`` decode samples, every coefficient kept >= 0.

    A negative fitted coefficient would make the simulator's step times fall as batches grow,
    so the fit is a true non-negative least squares (exact for three unknowns: the best
    non-negative solution is the plain fit on some subset of the coefficients).

    Sample in the units the simulator charges, which are what the torch engine computes:
    prefill samples from single-prompt prefills (``batch_tokens`` = the prompt length; the
    quadratic term is per sequence), decode samples with ``context_tokens`` = rows x the
    longest ``seq_len`` in the batch (the engine gathers a dense ``[rows, longest]`` cache).
    """
    if not prefill_samples:
        raise ValueError("fit needs at least one prefill sample")
    if not decode_samples:
        raise ValueError("fit needs at least one decode sample")
    prefill_rows, prefill_ms = [], []
    for i, sample in enumerate(prefill_samples):
        tokens, ms = _numbers(sample, 2, f"prefill sample {i}")
        prefill_rows.append((1.0, tokens, tokens * tokens))
        prefill_ms.append(ms)
    decode_rows, decode_ms = [], []
    for i, sample in enumerate(decode_samples):
        batch, context, ms = _numbers(sample, 3, f"decode sample {i}")
        decode_rows.append((1.0, batch, context))
        decode_ms.append(ms)
    p_base, p_tok, p_sq = nonnegative_least_squares(prefill_rows, prefill_ms)
    d_base, d_seq, d_ctx = nonnegative_least_squares(decode_rows, decode_ms)
    return GpuProfile(
        gpu_type=gpu_type,
        model=shape.key,
        source="measured",
        prefill_base_ms=p_base,
        prefill_ms_per_token=p_tok,
        prefill_ms_per_token_sq=p_sq,
        decode_base_ms=d_base,
        decode_ms_per_seq=d_seq,
        decode_ms_per_context_token=d_ctx,
        kv_capacity_tokens=kv_capacity_tokens,
        max_batch=max_batch,
        power_watts=power_watts,
        block_size=block_size,
    )


def _numbers(sample: Any, count: int, where: str) -> list[float]:
    if not isinstance(sample, tuple | list) or len(sample) != count:
        raise ValueError(f"{where} must have {count} numbers, got {sample!r}")
    values = []
    for value in sample:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{where} must have {count} numbers, got {sample!r}")
        values.append(float(value))
    return values


def nonnegative_least_squares(rows: list[tuple[float, ...]], targets: list[float]) -> list[float]:
    """Coefficients ``x >= 0`` minimising ``sum((row . x - target)**2)``, for a handful of columns.

    Columns are scaled to a maximum of 1 first so that ``t**2`` next to ``1`` does not ruin
    the normal equations; every subset of columns is solved and the best feasible fit wins.
    """
    n = len(rows[0])
    scale = [max(abs(row[j]) for row in rows) or 1.0 for j in range(n)]
    scaled = [[row[j] / scale[j] for j in range(n)] for row in rows]

    def error(coef: list[float]) -> float:
        return sum(
            (sum(c * x for c, x in zip(coef, row, strict=True)) - y) ** 2
            for row, y in zip(scaled, targets, strict=True)
        )

    best, best_error = [0.0] * n, error([0.0] * n)
    for size in range(1, n + 1):
        for cols in itertools.combinations(range(n), size):
            solution = _solve_normal(scaled, targets, cols)
            if solution is None or any(v < 0 for v in solution):
                continue
            coef = [0.0] * n
            for j, v in zip(cols, solution, strict=True):
                coef[j] = v
            err = error(coef)
            if err < best_error:
                best, best_error = coef, err
    return [c / s for c, s in zip(best, scale, strict=True)]


def _solve_normal(rows: list[list[float]], targets: list[float], cols: tuple[int, ...]) -> list[float] | None:
    """Least squares on ``cols`` by the normal equations and Gaussian elimination; None if singular."""
    k = len(cols)
    a = [[sum(row[i] * row[j] for row in rows) for j in cols] for i in cols]
    b = [sum(row[i] * y for row, y in zip(rows, targets, strict=True)) for i in cols]
    size = max(a[i][i] for i in range(k))
    if size <= 0:
        return None
    for col in range(k):
        pivot = max(range(col, k), key=lambda r: abs(a[r][col]))
        if abs(a[pivot][col]) <= 1e-12 * size:
            return None
        a[col], a[pivot] = a[pivot], a[col]
        b[col], b[pivot] = b[pivot], b[col]
        for r in range(col + 1, k):
            factor = a[r][col] / a[col][col]
            for c in range(col, k):
                a[r][c] -= factor * a[col][c]
            b[r] -= factor * b[col]
    x = [0.0] * k
    for r in range(k - 1, -1, -1):
        x[r] = (b[r] - sum(a[r][c] * x[c] for c in range(r + 1, k))) / a[r][r]
    return x
