"""A paged KV cache: fixed-size blocks from one preallocated tensor, handed out by a free list.

Memory is bounded by construction: the cache is allocated once (from a block count or a
byte budget) and requests only ever borrow blocks from it. Each sequence keeps a block
table (its block ids in position order); position ``p`` lives in slot
``table[p // block_size] * block_size + p % block_size`` of the flat slot axis.
"""

from __future__ import annotations

import math
from collections import deque

import torch

from agents.runtimes.model import ModelConfig
from plugins.prefix_hash import BLOCK_SIZE

DEFAULT_BLOCK_SIZE = BLOCK_SIZE


class BlockAllocator:
    """A free list of block ids. ``allocate`` is all-or-nothing so a request never holds half
    of what it asked for; freeing returns blocks for reuse (most recently freed first)."""

    def __init__(self, num_blocks: int):
        if num_blocks < 1:
            raise ValueError(f"a KV cache needs at least one block, got {num_blocks}")
        self.num_blocks = num_blocks
        self._free: deque[int] = deque(range(num_blocks))
        self._used: set[int] = set()

    @property
    def free_count(self) -> int:
        return len(self._free)

    @property
    def used_count(self) -> int:
        return len(self._used)

    def allocate(self, count: int) -> list[int] | None:
        """``count`` block ids, or None (and nothing taken) when fewer are free."""
        if count < 0:
            raise ValueError("cannot allocate a negative number of blocks")
        if count > len(self._free):
            return None
        blocks = [self._free.popleft() for _ in range(count)]
        self._used.update(blocks)
        return blocks

    def free(self, blocks: list[int]) -> None:
        """Return ``blocks``; freeing a block that is not allocated is a bug and raises."""
        for block in blocks:
            if block not in self._used:
                raise ValueError(f"block {block} is not allocated")
            self._used.remove(block)
            self._free.appendleft(block)


class BlockTable:
    """The blocks one sequence holds, in position order."""

    def __init__(self, block_size: int):
        self.block_size = block_size
        self.blocks: list[int] = []

    @property
    def capacity(self) -> int:
        return len(self.blocks) * self.block_size

    def blocks_needed(self, tokens: int) -> int:
        """How many more blocks holding ``tokens`` positions takes."""
        return max(0, math.ceil(tokens / self.block_size) - len(self.blocks))

    def slots(self, start: int, end: int) -> list[int]:
        """Flat cache slots of positions ``start..end-1`` (which must be within capacity)."""
        bs = self.block_size
        return [self.blocks[p // bs] * bs + p % bs for p in range(start, end)]


class PagedKVCache:
    """The cache tensor ``[layers, 2, num_blocks * block_size, kvHeads, headDim]`` and its allocator."""

    def __init__(
        self,
        config: ModelConfig,
        num_blocks: int,
        device: str | torch.device,
        dtype: torch.dtype,
        block_size: int = DEFAULT_BLOCK_SIZE,
    ):
        self.config = config
        self.block_size = block_size
        self.allocator = BlockAllocator(num_blocks)
        self.kv = torch.zeros(
            (config.layers, 2, num_blocks * block_size, config.kvHeads, config.headDim),
            device=device,
            dtype=dtype,
        )

    @staticmethod
    def bytes_per_block(config: ModelConfig, dtype: torch.dtype, block_size: int = DEFAULT_BLOCK_SIZE) -> int:
        element = torch.empty((), dtype=dtype).element_size()
        return config.layers * 2 * block_size * config.kvHeads * config.headDim * element

    @classmethod
    def blocks_for_budget(
        cls, config: ModelConfig, dtype: torch.dtype, budget_bytes: int, block_size: int = DEFAULT_BLOCK_SIZE
    ) -> int:
        """How many blocks fit in ``budget_bytes`` (at least one)."""
        return max(1, budget_bytes // cls.bytes_per_block(config, dtype, block_size))

    @property
    def num_blocks(self) -> int:
        return self.allocator.num_blocks

    def new_table(self) -> BlockTable:
        return BlockTable(self.block_size)

    def grow(self, table: BlockTable, tokens: int) -> bool:
        """Make ``table`` hold ``tokens`` positions; False (and no change) if blocks ran out."""
        needed = table.blocks_needed(tokens)
        if needed == 0:
            return True
        blocks = self.allocator.allocate(needed)
        if blocks is None:
            return False
        table.blocks.extend(blocks)
        return True

    def release(self, table: BlockTable) -> None:
        """Give all of ``table``'s blocks back."""
        self.allocator.free(table.blocks)
        table.blocks = []

    def usage(self) -> dict[str, int]:
        return {
            "blocksTotal": self.num_blocks,
            "blocksUsed": self.allocator.used_count,
            "blocksFree": self.allocator.free_count,
            "blockSize": self.block_size,
            "bytes": self.kv.numel() * self.kv.element_size(),
        }
