"""Text corpora for causal-LM workloads: a character-level tokenizer, a deterministic
held-out split by line, and fixed token windows for evaluation and training."""

from __future__ import annotations

import hashlib
import lzma
from pathlib import Path

import torch

__all__ = ["CharTokenizer", "kjv_text", "split_lines", "windows"]

_DATA = Path(__file__).resolve().parent.parent / "workloads" / "data"


def kjv_text() -> str:
    """The whole King James Bible, one verse per line (see data/make_kjv_corpus.py)."""
    return lzma.decompress((_DATA / "kjv.txt.xz").read_bytes()).decode("ascii")


class CharTokenizer:
    """One token per character of a fixed alphabet; unknown characters map to id 0."""

    def __init__(self, alphabet: str):
        self.alphabet = alphabet
        self._index = {c: i for i, c in enumerate(alphabet)}

    @classmethod
    def for_text(cls, text: str) -> CharTokenizer:
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet)

    def encode(self, text: str) -> list[int]:
        return [self._index.get(c, 0) for c in text]

    def encode_tensor(self, text: str) -> torch.Tensor:
        """`encode` as a tensor; ASCII text through a byte table (a whole corpus in a
        fraction of a second instead of seconds)."""
        small = self.vocab_size <= 256
        if small and text.isascii():
            table = bytes(self._index.get(chr(b), 0) for b in range(256))
            ids = bytearray(text.encode("ascii").translate(table))
            return torch.frombuffer(ids, dtype=torch.uint8)
        return torch.tensor(self.encode(text), dtype=torch.uint8 if small else torch.long)

    def decode(self, ids: list[int]) -> str:
        return "".join(self.alphabet[i] for i in ids)


def split_lines(text: str, heldout_every: int = 20) -> tuple[str, str]:
    """(train, held-out): a line is held out when its BLAKE2b hash is 0 mod
    `heldout_every`, so the split does not depend on the order of the lines."""
    train, held = [], []
    for line in text.splitlines():
        h = int.from_bytes(hashlib.blake2b(line.encode(), digest_size=4).digest(), "big")
        (held if h % heldout_every == 0 else train).append(line)
    return "\n".join(train) + "\n", "\n".join(held) + "\n"


def windows(ids: torch.Tensor, length: int, count: int, *, seed: int | None = None
            ) -> torch.Tensor:
    """`count` windows of `length` tokens: consecutive from the start when `seed` is None,
    else at seeded random offsets."""
    if seed is None:
        n = min(count, len(ids) // length)
        return ids[: n * length].view(n, length).clone()
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - length, (count,), generator=g)
    return torch.stack([ids[s:s + length] for s in starts.tolist()])
