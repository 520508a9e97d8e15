"""Issue 4 acceptance: serving knobs under one memory budget, on digits.

    python benchmarks/serving.py [--trials 16] [--joint-trials 24]

1. `--space serving` study of 16 trials: Spearman correlation between
   `serve.cache_ratio` and the measured `cache_hit_rate` (goal > 0.3), and that every
   trial has all serve metrics.
2. `--space joint --memory-budget-mb 0.3`: infeasible trials are COMPLETE, none FAIL.
3. A joint study's feasible Pareto front with the memory split, to show compression
   buying cache or batch room and therefore throughput.
"""

from __future__ import annotations

import argparse
import json
import tempfile

from scipy.stats import spearmanr

from _common import csearch, machine

SERVE = ("latency_ms", "latency_p99_ms", "throughput_rps", "cache_hit_rate", "memory_mb")


def trials(url: str, study: str) -> list[dict]:
    return json.loads(csearch("trials", "--study", study, "--storage", url,
                              "--format", "json").stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--joint-trials", type=int, default=24)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp()
    url = f"sqlite:///{tmp}/serving.db"
    print(f"machine: {machine()}")

    csearch("run", "--study", "serving", "--storage", url, "--space", "serving",
            "--trials", str(a.trials), "--quiet", "--artifacts", "none")
    rows = [r for r in trials(url, "serving") if r["state"] == "COMPLETE"]
    beta = [r["params"]["serve.cache_ratio"] for r in rows]
    hits = [r["metrics"]["cache_hit_rate"] for r in rows]
    rho = spearmanr(beta, hits).statistic
    complete = all(all(k in r["metrics"] for k in SERVE) for r in rows)
    print(f"1. serving: {len(rows)} complete trials, Spearman(cache_ratio, cache_hit_rate) "
          f"= {rho:.3f} (goal > 0.3); all serve metrics present: {complete}")

    csearch("run", "--study", "tight", "--storage", url, "--space", "joint",
            "--memory-budget-mb", "0.3", "--trials", str(a.joint_trials), "--quiet",
            "--artifacts", "none")
    rows = trials(url, "tight")
    states: dict[str, int] = {}
    for r in rows:
        key = r["state"] + ("" if r["state"] != "COMPLETE" else
                            " feasible" if r["feasible"] else " infeasible")
        states[key] = states.get(key, 0) + 1
    print(f"2. joint at 0.3 MB: {states} (FAIL must be absent)")

    csearch("run", "--study", "joint", "--storage", url, "--space", "joint",
            "--trials", str(a.joint_trials), "--quiet", "--artifacts", "none")
    front = json.loads(csearch("pareto", "--study", "joint", "--storage", url,
                               "--format", "json").stdout)
    print("3. joint Pareto front (budget 1 MB):")
    print("   #   acc     size_mb  weights%  cache_ratio mem_ratio max_batch hit_rate  rps")
    for r in sorted(front, key=lambda r: r["metrics"]["size_mb"]):
        m, p = r["metrics"], r["params"]
        print(f"   {r['number']:<3} {m['accuracy']:.4f}  {m['size_mb']:.4f}   "
              f"{100 * m['size_mb'] / 1.0:5.1f}%   {p.get('serve.cache_ratio', 0):.3f}"
              f"       {p.get('serve.memory_ratio', 0):.3f}     {m.get('max_batch', 0):>4.0f}"
              f"      {m['cache_hit_rate']:.3f}  {m['throughput_rps']:.0f}")


if __name__ == "__main__":
    main()
