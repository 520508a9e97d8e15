"""The default memory budget of a causal-LM workload that names none (`causal-lm:DIR`, a
plugin LM): room for the fp32 model as packed, plus a working KV pool and workspace, so
the uncompressed model serves its `concurrency` clients at once and compression is what
buys more (a classifier's default, twice the fp32 weights, is unrelated to the KV cache
that bounds an LM server)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..pack import dense_bound
from ..serve import activation_bytes_per_sample
from ..workload import Workload
from .engine import blocks_for
from .kv import kv_bytes_per_token
from .model import lm_shape

__all__ = ["LMBudget", "lm_default_budget", "round_up_3"]


@dataclass(frozen=True)
class LMBudget:
    """The default budget and what it is made of, in bytes."""

    weight_bytes: int  # the fp32 model as packed at most (`pack.dense_bound`)
    kv_bytes: int  # fp16 KV blocks for `sequences` longest sequences
    workspace_bytes: int  # activations of `tokens` tokens in one step
    sequences: int
    tokens: int

    @property
    def mb(self) -> float:
        """The sum in MB, rounded up to 3 significant digits."""
        return round_up_3((self.weight_bytes + self.kv_bytes + self.workspace_bytes) / 1e6)

    def split(self) -> dict[str, float]:
        """The serve split the budget was made of (its KV pool and workspace, as shares of
        the rounded budget): the uncompressed baseline is served with it."""
        total = self.mb * 1e6
        return {"serve.cache_ratio": (self.kv_bytes + 1) / total,
                "serve.memory_ratio": (self.workspace_bytes + 1) / total}

    def describe(self) -> str:
        return (f"fp32 weights {self.weight_bytes / 1e6:.3g} MB + fp16 KV pool for "
                f"{self.sequences} sequences {self.kv_bytes / 1e6:.3g} MB + workspace for "
                f"{self.tokens} tokens {self.workspace_bytes / 1e6:.3g} MB")


def round_up_3(x: float) -> float:
    """`x` rounded up to 3 significant digits (never below it, so what it was sized to
    hold still fits)."""
    if x <= 0:
        return x
    step = 10.0 ** (math.floor(math.log10(x)) - 2)
    return round(math.ceil(x / step - 1e-9) * step, 10)


@torch.inference_mode()
def lm_default_budget(workload: Workload) -> LMBudget:
    """fp32 weights + a KV pool holding `concurrency` of the replay's longest sequences
    (prompt + new tokens) at fp16 + a workspace for one step of max(concurrency, longest
    prompt) tokens (a whole decoding batch, or one prompt's prefill), activations measured
    with forward hooks as the replay measures them."""
    model = workload.model
    settings = workload.extras["generation"]
    prompts = workload.extras["lm_data"].prompts
    weight_bytes = dense_bound(model.state_dict())
    shape = lm_shape(model)
    longest = max(len(p) for p in prompts)
    block = settings.block_size * kv_bytes_per_token(shape.n_layers, shape.n_kv_heads,
                                                     shape.head_dim, 16)
    sequences = int(settings.concurrency)
    kv = sequences * blocks_for(longest, settings.new_tokens, settings.block_size) * block
    sample = max(prompts, key=len)
    device = next(iter(model.state_dict().values())).device
    per_token = math.ceil(activation_bytes_per_sample(
        model, torch.tensor([list(sample)], device=device), device) / len(sample))
    tokens = max(sequences, longest)
    return LMBudget(weight_bytes, kv, tokens * per_token, sequences, tokens)
