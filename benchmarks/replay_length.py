"""Issue 24: tokens/s of two fixed tiny-lm configs at 6.8 MB, replayed with 48 and with 96
requests, 4 seeds each: the mean, the spread between repeats (CV) and the evaluation time.

    python benchmarks/replay_length.py 48 96
"""
import statistics
import sys
import time
import objectives.workloads.tiny_lm as t
from objectives.lm.replay import GenerationSettings
from objectives.pipeline import evaluate
from spaces import Config

cfgs = {"int8 kv8": {"quant.method": "int8_dynamic", "quant.kv_bits": 8, "serve.batch_size": 16,
                     "serve.cache_ratio": 0.4,
                     "serve.memory_ratio": 0.1},
        "lowbit4": {"quant.method": "lowbit", "quant.bits": 4, "quant.group_size": 64,
                    "serve.batch_size": 64, "serve.cache_ratio": 0.5, "serve.memory_ratio": 0.2}}
for n in map(int, sys.argv[1:]):
    t._REPLAY = GenerationSettings(n_requests=n)
    w = t.make_tiny_lm_workload()
    for name, flat in cfgs.items():
        c = Config.from_flat(flat)
        tps, secs = [], []
        for r in range(4):
            t0 = time.perf_counter()
            e = evaluate(w, c, budget_mb=6.8, seed=r)
            secs.append(time.perf_counter() - t0)
            tps.append(e.metrics["throughput_tps"])
        m = statistics.mean(tps)
        cv = statistics.stdev(tps) / m
        print(f"n={n} {name}: tps {[round(x) for x in tps]} mean {m:.0f} cv {cv:.3f} "
              f"ttft {e.metrics['ttft_ms']:.1f} eval {statistics.mean(secs):.2f}s", flush=True)
