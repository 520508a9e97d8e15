"""Prefix caching on `tiny-lm`, one process, one budget: a Zipf trace with repeated
prompts vs. a trace of distinct prompts (same count, same config), fp32 weights, and the
running-sequence limit at a budget where fp32 weights leave little room.

    flock /tmp/csearch-cpu.lock python benchmarks/lm_prefix_cache.py
"""

from __future__ import annotations

import json

import numpy as np
import torch

from objectives.lm.replay import GenerationSettings, generation_replay
from objectives.pack import pack_state
from objectives.serve import zipf_trace
from objectives.workloads import load_workload
from spaces import ServeConfig


def main() -> None:
    w = load_workload("tiny-lm")
    prompts = w.extras["lm_data"].prompts
    weights = len(pack_state(w.model.state_dict(), {}, set()))
    n = len(prompts)
    settings = GenerationSettings(n_requests=n)
    traces = {"repeated": zipf_trace(n, n, 1.1, 0), "distinct": np.random.default_rng(0)
              .permutation(n)}
    out: dict[str, object] = {"fp32_weights_mb": weights / 1e6}
    # fp32 weights are 6.40 MB: both splits leave room for the weights (feasible)
    for budget_mb, cache, mem in ((8.0, 0.15, 0.04), (7.0, 0.06, 0.02)):
        cfg = ServeConfig(batch_size=64, threads=2, cache_ratio=cache, memory_ratio=mem)
        for name, trace in traces.items():
            r = generation_replay(w.model, prompts, trace, cfg, kv_bits=16,
                                  budget_bytes=int(budget_mb * 1e6), weight_bytes=weights,
                                  device=torch.device("cpu"), settings=settings)
            out[f"{budget_mb}MB/{name}"] = {
                k: round(r.metrics[k], 3) for k in ("prefix_hit_rate", "ttft_ms", "tpot_ms",
                                                    "throughput_tps", "max_running",
                                                    "memory_mb")} | {
                "feasible": r.feasible_margin_mb <= 0, "capacity": r.capacity,
                "distinct_prompts": len(set(map(int, trace)))}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
