"""A Llama-style decoder-only transformer in plain PyTorch, shared by the serve and train runtimes.

RMSNorm, rotary position embeddings, grouped-query attention and a SwiGLU MLP. The
LM head is *untied* from the token embedding (``lm_head.weight`` is its own tensor):
safetensors refuses shared storage, and untied heads load Llama-style checkpoints
without special cases.

Two forward paths share every weight and every kernel:

- :meth:`Transformer.forward` -- full causal attention over ``[B, T]``, no cache (training
  and the reference decode in tests);
- :meth:`Transformer.forward_cached` -- new tokens attend over a paged KV cache that the
  serving engine owns (see ``agents/runtimes/serve/kvcache.py``).

No Django, and nothing is ever downloaded: weights are random from ``config.seed`` or read
from a local path.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}
BUILTIN_MODELS = {"tiny-llama": {}}


@dataclass
class ModelConfig:
    """Shape of the model; the defaults are ``builtin:tiny-llama``."""

    vocabSize: int = 259  # 256 bytes + BOS(256) + EOS(257) + PAD(258)
    layers: int = 4
    hidden: int = 256
    heads: int = 4
    kvHeads: int = 2  # grouped-query attention: heads % kvHeads == 0
    intermediate: int = 688  # SwiGLU hidden size
    maxSeqLen: int = 512
    ropeTheta: float = 10000.0
    normEps: float = 1e-5
    seed: int = 0
    dtype: str = "auto"  # auto -> bfloat16 on CUDA, float32 on CPU

    @property
    def headDim(self) -> int:
        return self.hidden // self.heads

    def validate(self) -> None:
        """Raise ValueError on shapes the model cannot be built with."""
        for name in ("vocabSize", "layers", "hidden", "heads", "kvHeads", "intermediate", "maxSeqLen"):
            if getattr(self, name) < 1:
                raise ValueError(f"model config {name} must be >= 1, got {getattr(self, name)}")
        if self.hidden % self.heads:
            raise ValueError(f"model config hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        if self.heads % self.kvHeads:
            raise ValueError(f"model config heads ({self.heads}) must divide by kvHeads ({self.kvHeads})")
        if self.headDim % 2:
            raise ValueError(f"model config hidden/heads ({self.headDim}) must be even for rotary embeddings")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"model config dtype must be 'auto' or one of {sorted(DTYPES)}: {self.dtype!r}")

    def torch_dtype(self, device: str | torch.device) -> torch.dtype:
        """The parameter dtype on ``device``: ``auto`` is bf16 on CUDA and fp32 elsewhere."""
        if self.dtype == "auto":
            return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
        return DTYPES[self.dtype]


CONFIG_FIELDS = {f.name: f for f in dataclasses.fields(ModelConfig)}


def config_with_overrides(base: ModelConfig, overrides: dict[str, Any], where: str = "config") -> ModelConfig:
    """``base`` with ``overrides`` applied; unknown keys and wrong types are ValueErrors naming the key."""
    values = dataclasses.asdict(base)
    for key, value in overrides.items():
        field = CONFIG_FIELDS.get(key)
        if field is None:
            raise ValueError(f"unknown model {where} key {key!r}; known keys: {', '.join(CONFIG_FIELDS)}")
        if field.type == "float" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        expected = {"int": int, "float": float, "str": str}[field.type]
        if isinstance(value, bool) or not isinstance(value, expected):
            raise ValueError(f"model {where} key {key!r} must be {field.type}, got {value!r}")
        values[key] = value
    config = ModelConfig(**values)
    config.validate()
    return config


def model_config_from_spec(model: dict) -> ModelConfig:
    """The ModelConfig for a Deployment ``spec.model`` (``{"source": ..., "config": {...}}``).

    ``builtin:tiny-llama`` is the defaults; ``path:/dir`` starts from the directory's
    ``config.json`` when there is one. ``config`` overrides either.
    """
    from agents.runtimes import weights

    source = model.get("source", "builtin:tiny-llama")
    overrides = model.get("config") or {}
    if not isinstance(overrides, dict):
        raise ValueError("model config must be a mapping")
    if not isinstance(source, str):
        raise ValueError("model source must be a string")
    if source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
        if name not in BUILTIN_MODELS:
            raise ValueError(f"unknown builtin model {name!r}; known: {', '.join(BUILTIN_MODELS)}")
        base = config_with_overrides(ModelConfig(), BUILTIN_MODELS[name])
    elif source.startswith("path:"):
        base = config_with_overrides(
            ModelConfig(), weights.read_config_json(source.removeprefix("path:")), where="config.json"
        )
    else:
        raise ValueError(f"model source must start with 'builtin:' or 'path:', got {source!r}")
    return config_with_overrides(base, overrides)


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in fp32 so bf16 activations stay stable."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.to(x.dtype) * self.weight


def rotary(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate ``x`` ``[B, heads, T, D]`` by ``positions`` ``[B, T]`` (half-split RoPE, as in Llama).

    The angles are computed from the positions on each call, in fp32 (or fp64 for fp64
    models), so there is no table to size or to lose precision when the model is cast.
    """
    dim = x.shape[-1]
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, device=x.device, dtype=work) / dim))
    angles = positions.to(work)[:, None, :, None] * inv_freq  # [B, 1, T, D/2]
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x.to(work).chunk(2, dim=-1)
    out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return out.to(x.dtype)


class Attention(nn.Module):
    """Grouped-query self-attention: ``heads`` query heads share ``kvHeads`` key/value heads."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        d = config.headDim
        self.wq = nn.Linear(config.hidden, config.heads * d, bias=False)
        self.wk = nn.Linear(config.hidden, config.kvHeads * d, bias=False)
        self.wv = nn.Linear(config.hidden, config.kvHeads * d, bias=False)
        self.wo = nn.Linear(config.heads * d, config.hidden, bias=False)

    def project(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """q ``[B, H, T, D]``, k and v ``[B, T, KVH, D]`` (k rotated)."""
        c = self.config
        b, t, _ = x.shape
        q = self.wq(x).view(b, t, c.heads, c.headDim).transpose(1, 2)
        k = self.wk(x).view(b, t, c.kvHeads, c.headDim).transpose(1, 2)
        v = self.wv(x).view(b, t, c.kvHeads, c.headDim)
        q = rotary(q, positions, c.ropeTheta)
        k = rotary(k, positions, c.ropeTheta).transpose(1, 2)
        return q, k, v

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Attention of q ``[B, H, T, D]`` over k, v ``[B, L, KVH, D]``; ``None`` mask means causal."""
        k, v = k.transpose(1, 2), v.transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=True)
        b, _, t, _ = q.shape
        return self.wo(out.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.w_gate = nn.Linear(config.hidden, config.intermediate, bias=False)
        self.w_up = nn.Linear(config.hidden, config.intermediate, bias=False)
        self.w_down = nn.Linear(config.intermediate, config.hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class Block(nn.Module):
    """Pre-norm residual block: attention then MLP."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden, config.normEps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.hidden, config.normEps)
        self.mlp = MLP(config)


class Transformer(nn.Module):
    """The decoder. Parameter names: ``embed``, ``layers.N.{attn_norm,attn.w[qkvo],mlp_norm,mlp.w_*}``,
    ``norm``, ``lm_head`` -- the names a safetensors checkpoint must use."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.embed = nn.Embedding(config.vocabSize, config.hidden)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.norm = RMSNorm(config.hidden, config.normEps)
        self.lm_head = nn.Linear(config.hidden, config.vocabSize, bias=False)

    @torch.no_grad()
    def init_weights(self, seed: int) -> None:
        """Deterministic init from ``seed`` on a CPU generator, whatever the device.

        Normal(0, 0.02) everywhere, residual output projections scaled by 1/sqrt(2*layers)
        (GPT-2 style) so the residual stream does not grow with depth; norms at one.
        """
        gen = torch.Generator(device="cpu").manual_seed(seed)
        out_std = 0.02 / math.sqrt(2 * self.config.layers)
        for name, param in self.named_parameters():
            if name.endswith("norm.weight"):
                values = torch.ones(param.shape)
            else:
                std = out_std if name.endswith(("wo.weight", "w_down.weight")) else 0.02
                values = torch.randn(param.shape, generator=gen, dtype=torch.float32) * std
            param.copy_(values.to(param.device, param.dtype))

    def forward(self, tokens: torch.LongTensor) -> torch.Tensor:
        """Logits ``[B, T, vocabSize]`` for ``tokens`` ``[B, T]`` with full causal attention."""
        b, t = tokens.shape
        if t > self.config.maxSeqLen:
            raise ValueError(f"sequence length {t} exceeds maxSeqLen {self.config.maxSeqLen}")
        positions = torch.arange(t, device=tokens.device).expand(b, t)
        x = self.embed(tokens)
        for block in self.layers:
            q, k, v = block.attn.project(block.attn_norm(x), positions)
            x = x + block.attn.attend(q, k, v, None)
            x = x + block.mlp(block.mlp_norm(x))
        return self.lm_head(self.norm(x))

    def forward_cached(
        self,
        tokens: torch.LongTensor,
        positions: torch.LongTensor,
        write_slots: torch.LongTensor,
        read_slots: torch.LongTensor,
        read_lens: torch.LongTensor,
        kv: torch.Tensor,
        last_index: torch.LongTensor,
    ) -> torch.Tensor:
        """Run new tokens against a paged KV cache and return next-token logits ``[B, vocabSize]``.

        - ``tokens``/``positions`` ``[B, T]``: each row's new tokens (right-padded) and their
          absolute positions;
        - ``write_slots`` ``[B, T]``: flat cache slot for each new token's k/v, ``-1`` on padding;
        - ``read_slots`` ``[B, L]``: flat slots of positions ``0..L-1`` of each sequence, padded;
        - ``read_lens`` ``[B]``: how many of those are valid (the context after this step);
        - ``kv`` ``[layers, 2, slots, kvHeads, headDim]``: the cache, written in place;
        - ``last_index`` ``[B]``: which new token's logits to return (the last real one).

        The blocks are gathered into dense ``[B, L, kvHeads, headDim]`` tensors per layer, so
        a step costs O(B * L) memory traffic beyond the cache itself: simple and exact.
        """
        valid = write_slots >= 0
        flat_slots = write_slots[valid]
        key_pos = torch.arange(read_slots.shape[1], device=tokens.device)
        mask = (key_pos[None, None, :] <= positions[:, :, None]) & (
            key_pos[None, None, :] < read_lens[:, None, None]
        )
        mask = mask[:, None, :, :]  # [B, 1, T, L]
        x = self.embed(tokens)
        for i, block in enumerate(self.layers):
            q, k, v = block.attn.project(block.attn_norm(x), positions)
            kv[i, 0, flat_slots] = k[valid].to(kv.dtype)
            kv[i, 1, flat_slots] = v[valid].to(kv.dtype)
            keys, values = kv[i, 0][read_slots], kv[i, 1][read_slots]
            x = x + block.attn.attend(q, keys.to(q.dtype), values.to(q.dtype), mask)
            x = x + block.mlp(block.mlp_norm(x))
        rows = torch.arange(tokens.shape[0], device=tokens.device)
        return self.lm_head(self.norm(x[rows, last_index]))


def build_model(model_spec: dict, device: str | torch.device) -> tuple[Transformer, ModelConfig]:
    """A Transformer on ``device`` in eval mode: random from ``config.seed``, or loaded from ``path:``."""
    from agents.runtimes import weights

    config = model_config_from_spec(model_spec)
    device = torch.device(device)
    model = Transformer(config)
    source = model_spec.get("source", "builtin:tiny-llama")
    if source.startswith("path:"):
        weights.load_weights(model, source.removeprefix("path:"))
    else:
        model.init_weights(config.seed)
    model = model.to(device=device, dtype=config.torch_dtype(device))
    model.eval()
    return model, config
