"""The KV-cache block pool: fixed-size blocks of token slots in preallocated tensors,
reference-counted, with an LRU of freed prompt-prefix blocks (prefix caching).

A full block of a prompt is identified by the hash of its tokens and of every token
before it (as in vLLM's automatic prefix caching). When the last sequence using such a
block finishes, the block is not freed but parked in an LRU; a later prompt with the same
prefix takes it back (its keys and values are read, not recomputed). Allocation takes a
free block first, then evicts the least recently used parked one.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Sequence

import torch

from .kv import dequantize_kv, quantize_kv

__all__ = ["BlockPool", "BlockPoolError", "prefix_hashes"]


class BlockPoolError(RuntimeError):
    """An accounting invariant broke (double free, use of a free block)."""


def prefix_hashes(tokens: Sequence[int], block_size: int) -> list[bytes]:
    """One chained hash per full block of `tokens`."""
    out: list[bytes] = []
    parent = b""
    for start in range(0, len(tokens) - block_size + 1, block_size):
        block = bytes(str(list(tokens[start:start + block_size])), "ascii")
        parent = hashlib.blake2b(parent + block, digest_size=16).digest()
        out.append(parent)
    return out


class BlockPool:
    """`n_blocks` blocks of `block_size` tokens for `n_layers` layers of K and V."""

    def __init__(self, n_blocks: int, block_size: int, n_layers: int, n_kv_heads: int,
                 head_dim: int, kv_bits: int, device: torch.device | str = "cpu"):
        self.n_blocks, self.block_size, self.kv_bits = int(n_blocks), int(block_size), kv_bits
        shape = (n_layers, 2, self.n_blocks, self.block_size, n_kv_heads, head_dim)
        dtype = torch.float16 if kv_bits == 16 else torch.int8
        self.codes = torch.zeros(shape, dtype=dtype, device=device)
        self.scales = (torch.zeros(shape[:-1], dtype=torch.float16, device=device)
                       if kv_bits == 8 else None)
        self.refs = [0] * self.n_blocks
        self._free: list[int] = list(range(self.n_blocks - 1, -1, -1))
        self._parked: OrderedDict[int, None] = OrderedDict()  # refs == 0, hashed; LRU first
        self._hash_of: dict[int, bytes] = {}
        self._block_of: dict[bytes, int] = {}

    # -- accounting -------------------------------------------------------------------
    @property
    def available(self) -> int:
        """Blocks an allocation may take now (free + parked prefix blocks)."""
        return len(self._free) + len(self._parked)

    @property
    def in_use(self) -> int:
        return sum(1 for r in self.refs if r > 0)

    @property
    def parked(self) -> int:
        return len(self._parked)

    def allocate(self, n: int) -> list[int]:
        if n > self.available:
            raise BlockPoolError(f"{n} blocks asked, {self.available} available")
        out = []
        for _ in range(n):
            if self._free:
                b = self._free.pop()
            else:
                b, _ = self._parked.popitem(last=False)
                del self._block_of[self._hash_of.pop(b)]
            if self.refs[b] != 0:
                raise BlockPoolError(f"block {b} allocated while in use")
            self.refs[b] = 1
            out.append(b)
        return out

    def release(self, blocks: Sequence[int]) -> None:
        for b in blocks:
            if self.refs[b] <= 0:
                raise BlockPoolError(f"block {b} freed twice")
            self.refs[b] -= 1
            if self.refs[b] == 0:
                if b in self._hash_of:
                    self._parked[b] = None
                else:
                    self._free.append(b)

    def lookup(self, hashes: Sequence[bytes]) -> list[int]:
        """Cached blocks of the longest cached prefix; each gains a reference."""
        out = []
        for h in hashes:
            b = self._block_of.get(h)
            if b is None:
                break
            if self.refs[b] == 0:
                self._parked.pop(b)
            self.refs[b] += 1
            out.append(b)
        return out

    def register(self, block: int, h: bytes) -> None:
        """Mark a full, computed prompt block as reusable under hash `h`."""
        if self.refs[block] <= 0:
            raise BlockPoolError(f"block {block} registered while free")
        if h in self._block_of or block in self._hash_of:
            return
        self._hash_of[block] = h
        self._block_of[h] = block

    # -- data -------------------------------------------------------------------------
    def write(self, layer: int, blocks: Sequence[int], start: int, k: torch.Tensor,
              v: torch.Tensor) -> None:
        """Store `k`, `v` `[nkv, T, hd]` for token positions `start..start+T` of a sequence
        whose block table is `blocks`."""
        self.write_slots(layer, self._slots(blocks, start, k.shape[1]), k.transpose(0, 1),
                         v.transpose(0, 1))

    def read(self, layer: int, blocks: Sequence[int], length: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values `[nkv, length, hd]` (fp32) of a sequence's first `length` tokens."""
        k, v = self.read_slots(layer, self._slots(blocks, 0, length))
        return k.transpose(0, 1), v.transpose(0, 1)

    def write_slots(self, layer: int, slots: torch.Tensor, k: torch.Tensor,
                    v: torch.Tensor) -> None:
        """Store `k`, `v` `[T, nkv, hd]` at token slots `slots` `[T]` (block x size + offset):
        one indexed write for the new tokens of every sequence of a step."""
        for j, x in enumerate((k, v)):
            codes, scales = quantize_kv(x, self.kv_bits)
            self.codes[layer, j].view(-1, *self.codes.shape[-2:])[slots] = codes
            if scales is not None:
                self.scales[layer, j].view(-1, scales.shape[-1])[slots] = scales

    def read_slots(self, layer: int, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values `[*slots.shape, nkv, hd]` (fp32) at token slots `slots` (any shape,
        e.g. `[sequences, length]` for a whole step)."""
        out = []
        for j in range(2):
            codes = self.codes[layer, j].view(-1, *self.codes.shape[-2:])[slots]
            scales = (self.scales[layer, j].view(-1, self.scales.shape[-1])[slots]
                      if self.scales is not None else None)
            out.append(dequantize_kv(codes, scales))
        return out[0], out[1]

    def table(self, block_lists: Sequence[Sequence[int]], lengths: Sequence[int]
              ) -> torch.Tensor:
        """Slots `[sequences, max length]` of each sequence's first `lengths[i]` tokens
        (padding: slot 0, masked by the reader), checked once: every block in use."""
        n_max = max(len(b) for b in block_lists)
        table = torch.tensor([list(b) + [0] * (n_max - len(b)) for b in block_lists],
                             dtype=torch.long)
        for blocks, n in zip(block_lists, lengths):
            if math.ceil(n / self.block_size) > len(blocks):
                raise BlockPoolError(f"position {n - 1} is beyond the sequence's blocks")
            for blk in blocks:
                if self.refs[blk] <= 0:
                    raise BlockPoolError(f"block {blk} used while free")
        pos = torch.arange(max(lengths))
        return table[:, pos // self.block_size] * self.block_size + pos % self.block_size

    def _slots(self, blocks: Sequence[int], start: int, n: int) -> torch.Tensor:
        return self.table([blocks], [start + n])[0, start:start + n]
