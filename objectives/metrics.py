"""The metrics contract (DESIGN.md section 3): every evaluation fills all of these.

Kept free of torch so that listings and the CLI can validate metric names cheaply.
"""

from __future__ import annotations

__all__ = ["METRICS", "EXTRA_METRICS", "LM_METRICS", "UNITS"]

METRICS = (
    "accuracy",
    "accuracy_drop",
    "latency_ms",
    "latency_mean_ms",
    "latency_p99_ms",
    "model_latency_ms",
    "throughput_rps",
    "size_mb",
    "memory_mb",
    "cache_hit_rate",
    "sparsity",
    "eval_seconds",
)
# Also measured on every trial, and usable in objectives and constraints.
EXTRA_METRICS = ("max_batch", "effective_bits", "baseline_model_latency_ms", "speedup",
                 "frontend_busy_share", "model_busy_share")

UNITS = {
    "accuracy": "",
    "accuracy_drop": "",
    "latency_ms": "ms",  # median request latency of the replay
    "latency_mean_ms": "ms",  # mean request latency of the replay
    "latency_p99_ms": "ms",
    "model_latency_ms": "ms",  # compressed model's forward time per served miss
    "throughput_rps": "requests/s",
    "size_mb": "MB",
    "memory_mb": "MB",
    "cache_hit_rate": "",
    "sparsity": "",
    "eval_seconds": "s",
    "max_batch": "requests",
    "effective_bits": "bits/weight",
    "baseline_model_latency_ms": "ms",  # base model, same batches, timed interleaved
    "speedup": "x",  # baseline_model_latency_ms / model_latency_ms
    # Share of the replay's makespan the server's front end (serve_overhead_ms on every
    # request) and the model (its batches) were busy: the larger is the bottleneck.
    "frontend_busy_share": "",
    "model_busy_share": "",
    "perplexity": "",
    "ttft_ms": "ms",  # time to first token, p50
    "ttft_p99_ms": "ms",
    "tpot_ms": "ms",  # time per output token
    "throughput_tps": "tokens/s",
    "max_running": "sequences",
    "prefix_hit_rate": "",
    "kv_cache_mb": "MB",  # S_cache, the KV block pool
    "workspace_mb": "MB",  # S_mem, the activation workspace
}
# Causal-LM workloads (generation replay over a KV cache) also measure these.
LM_METRICS = ("perplexity", "ttft_ms", "ttft_p99_ms", "tpot_ms", "throughput_tps",
              "max_running", "prefix_hit_rate", "kv_cache_mb", "workspace_mb")
