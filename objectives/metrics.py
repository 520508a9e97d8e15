"""The metrics contract (DESIGN.md section 3): every evaluation fills all of these.

Kept free of torch so that listings and the CLI can validate metric names cheaply.
"""

from __future__ import annotations

__all__ = ["METRICS", "EXTRA_METRICS", "LM_METRICS"]

METRICS = (
    "accuracy",
    "accuracy_drop",
    "latency_ms",
    "latency_p99_ms",
    "throughput_rps",
    "size_mb",
    "memory_mb",
    "cache_hit_rate",
    "sparsity",
    "eval_seconds",
)
# Also measured on every trial, and usable in objectives and constraints.
EXTRA_METRICS = ("max_batch", "effective_bits")
# Causal-LM workloads (generation replay over a KV cache) also measure these.
LM_METRICS = ("perplexity", "ttft_ms", "ttft_p99_ms", "tpot_ms", "throughput_tps",
              "max_running", "prefix_hit_rate")
