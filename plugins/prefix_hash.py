"""The chained hashes that name KV-cache blocks by the tokens they hold.

Block ``i`` of a prompt is named by a hash of block ``i-1``'s name and its own
``block_size`` token ids, so two prompts share block ``i``'s name exactly when they
share every token up to the end of it: a prefix is a run of equal names. The
serving engine keys its prefix cache with these, and the router scores replicas
with the same function over the same tokens, so the two always agree.

BLAKE2b, not Python's ``hash()``: that one is salted per process, and the router
and each replica are different processes. Only full blocks are named: a partial
block can still change, and is never shared.
"""

from __future__ import annotations

import hashlib
from array import array

MASK = (1 << 63) - 1
# Token positions per KV block: the serving engine's paged cache, the router's hashes and
# the control plane's router config all use this one (torch-free, so the router and the
# control plane can import it).
BLOCK_SIZE = 16


def model_seed(model: str) -> int:
    """The chain's starting value for ``model`` (its name or source), so two models'
    blocks never share a name even for equal token ids."""
    return int.from_bytes(hashlib.blake2b(model.encode(), digest_size=8).digest(), "big") & MASK


def next_hash(parent: int, tokens: list[int] | tuple[int, ...]) -> int:
    """The name of a block holding ``tokens`` after the prefix named ``parent``."""
    data = parent.to_bytes(8, "big") + array("q", tokens).tobytes()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big") & MASK


def block_hashes(token_ids: list[int], block_size: int, seed: int = 0, limit: int | None = None) -> list[int]:
    """The names of the full blocks of ``token_ids``, first to last (at most ``limit``)."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    full = len(token_ids) // block_size
    if limit is not None:
        full = min(full, limit)
    names: list[int] = []
    parent = seed
    for i in range(full):
        parent = next_hash(parent, token_ids[i * block_size : (i + 1) * block_size])
        names.append(parent)
    return names
