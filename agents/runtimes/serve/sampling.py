"""Next-token choice: greedy, or temperature + nucleus (top-p) with a per-request generator.

Each request samples with its own ``torch.Generator`` seeded from its ``seed``, so a
seeded request gives the same tokens whatever else shares its batch.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch


@dataclass
class SamplingParams:
    """What a request asks of the sampler and the stop rules."""

    max_tokens: int = 16
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False  # benchmarks generate exactly max_tokens

    def validate(self) -> None:
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")

    def generator(self) -> torch.Generator | None:
        """The request's CPU generator (None for greedy): seeded from ``seed``, or randomly."""
        if self.temperature == 0:
            return None
        seed = self.seed if self.seed is not None else random.getrandbits(63)
        return torch.Generator(device="cpu").manual_seed(seed)


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """One token id from ``logits`` ``[vocab]``."""
    if params.temperature == 0 or generator is None:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits.detach().float().cpu() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        # keep the smallest prefix whose mass reaches top_p (always at least the best token)
        drop = cumulative - sorted_probs >= params.top_p
        sorted_probs[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator).item())


def greedy_batch(logits: torch.Tensor) -> list[int]:
    """Argmax for every row of ``logits`` ``[B, vocab]`` in one device call."""
    return torch.argmax(logits, dim=-1).tolist()
