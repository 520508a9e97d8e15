"""Issue 17's budget acceptance on `tiny-lm`: at a memory budget where fp32 weights leave
room for only a few running sequences, does the study's best-throughput feasible trial
within 1 point of accuracy use compressed weights or KV quantization, and how many
tokens/s does it give against the best feasible fp32-weight configuration?

Two studies at the same budget, with the real CLI:
  1. `--space lm` (joint + quant.kv_bits), objectives accuracy and throughput_tps;
  2. fp32 weights only (`benchmarks/lm_fp32_serving.toml`: no pruning, no
     quantization, no fine-tuning; the serving split, batch cap, threads and KV format
     searched), so the fp32 side gets its best split, not a default one.
Both keep the trials within 1 point of the base model's next-token accuracy.

    flock /tmp/csearch-cpu.lock python benchmarks/lm_budget.py --budget 7.5 --dir /tmp/lmb
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FP32_SPACE = ROOT / "benchmarks" / "lm_fp32_serving.toml"
SHOW = ("accuracy", "accuracy_drop", "throughput_tps", "ttft_ms", "tpot_ms", "max_running",
        "size_mb", "kv_cache_mb", "workspace_mb", "memory_mb")


def csearch(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "search.cli", *args], env=env, cwd=ROOT,
                       capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"csearch {' '.join(args)} failed: {r.stderr}")
    return r.stdout


def study(name: str, space: str, trials: int, budget: float, storage: str) -> float:
    t0 = time.perf_counter()
    csearch("run", "--workload", "tiny-lm", "--space", space, "--trials", str(trials),
            "--memory-budget-mb", str(budget), "--objective", "accuracy:max",
            "--objective", "throughput_tps:max", "--study", name, "--storage", storage)
    return time.perf_counter() - t0


def best(name: str, storage: str, bound: float, fp32_only: bool) -> dict | None:
    rows = json.loads(csearch("trials", "--study", name, "--storage", storage,
                              "--format", "json"))
    ok = [t for t in rows if t["state"] == "COMPLETE" and t["feasible"]
          and t["metrics"]["accuracy_drop"] <= bound]
    if fp32_only:  # every weight stored fp32 and none pruned (per-group quantizers too)
        ok = [t for t in ok if t["metrics"]["effective_bits"] >= 32
              and t["metrics"]["sparsity"] == 0]
    return max(ok, key=lambda t: t["metrics"]["throughput_tps"], default=None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=7.5)
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--fp32-trials", type=int, default=15)
    ap.add_argument("--bound", type=float, default=0.01, help="largest accuracy drop")
    ap.add_argument("--dir", default="/tmp/lm_budget")
    a = ap.parse_args()
    Path(a.dir).mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{Path(a.dir).resolve() / 'lm_budget.db'}"
    secs = {"lm": study("lm", "lm", a.trials, a.budget, storage),
            "fp32": study("fp32", str(FP32_SPACE), a.fp32_trials, a.budget, storage)}
    out: dict[str, object] = {"budget_mb": a.budget, "seconds": secs}
    for name, fp32_only in (("lm", False), ("lm-fp32", True), ("fp32", True)):
        t = best(name.split("-")[0], storage, a.bound, fp32_only)
        out[name] = t and {"number": t["number"], "params": t["params"],
                           **{k: t["metrics"].get(k) for k in SHOW}}
    lm, fp = out["lm"], out["fp32"]
    if lm and fp:
        out["ratio_tps"] = lm["throughput_tps"] / fp["throughput_tps"]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
