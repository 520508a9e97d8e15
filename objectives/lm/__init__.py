"""Causal-LM workloads: a Llama-family decoder's forward pass with pluggable attention,
KV-cache formats (`quant.kv_bits`), a paged prefix-caching block pool, and the generation
serve replay with continuous batching."""

from .blocks import BlockPool, BlockPoolError, prefix_hashes
from .budget import LMBudget, lm_default_budget
from .corpus import CharTokenizer, kjv_text, split_lines, windows
from .kv import KV_BITS, dequantize_kv, fake_quant_kv, kv_bytes_per_token, quantize_kv
from .model import (
    LM_FAMILIES,
    CausalLM,
    conv1d_to_linear,
    decoder_forward,
    full_attention,
    lm_head,
    lm_logits,
    lm_shape,
)
from .replay import GenerationResult, GenerationSettings, generation_replay
from .workload import (
    LMData,
    is_lm_workload,
    make_lm_workload,
    next_token_metrics,
    unigram_metrics,
)

__all__ = [
    "KV_BITS",
    "LMBudget",
    "LM_FAMILIES",
    "BlockPool",
    "BlockPoolError",
    "CausalLM",
    "CharTokenizer",
    "conv1d_to_linear",
    "GenerationResult",
    "GenerationSettings",
    "LMData",
    "decoder_forward",
    "dequantize_kv",
    "fake_quant_kv",
    "full_attention",
    "generation_replay",
    "is_lm_workload",
    "kjv_text",
    "kv_bytes_per_token",
    "lm_default_budget",
    "lm_head",
    "lm_logits",
    "lm_shape",
    "make_lm_workload",
    "next_token_metrics",
    "prefix_hashes",
    "quantize_kv",
    "split_lines",
    "unigram_metrics",
    "windows",
]
