"""Issue 8 acceptance on digits: per-layer-group compression against global-only
compression at the same trial budget, smallest packed model within a 1-point drop.

    python benchmarks/per_group_vs_global.py [--trials 40] [--seeds 0 1 2]

For each seed, two studies run back to back on one SQLite file, with the same budget,
sampler, seed, objectives (accuracy:max, size_mb:min) and constraint
(accuracy_drop<=0.01):
  * `global`: examples/global_only.toml, one pruning method and one quantizer for the
    whole model (the built-in `compression` space without its per-group parameters);
  * `per-group`: the built-in `compression` space (per-group quantizer, bits and
    sparsity, the sensitivity pass and its seeds).
Printed per seed: the smallest feasible `size_mb` of each, its trial and params, and the
ratio global / per-group (> 1: per-group found a smaller model). Sizes are the byte
counts of the packed artifacts, accuracy is measured on the held-out split.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

from _common import csearch, machine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPACES = {"global": os.path.join(ROOT, "examples", "global_only.toml"),
          "per-group": "compression"}


def best_feasible(url: str, study: str) -> dict | None:
    rows = json.loads(csearch("trials", "--study", study, "--storage", url,
                              "--format", "json").stdout)
    ok = [r for r in rows if r["state"] == "COMPLETE" and r["feasible"]]
    return min(ok, key=lambda r: r["metrics"]["size_mb"]) if ok else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a = ap.parse_args()
    url = f"sqlite:///{tempfile.mkdtemp()}/groups.db"
    print(f"machine: {machine()}; {time.strftime('%Y-%m-%d %H:%M')}; budget {a.trials} "
          f"trials per study; accuracy_drop <= 0.01; objectives accuracy, size_mb")
    ratios = []
    for seed in a.seeds:
        best = {}
        for label, space in SPACES.items():
            study = f"{label}-s{seed}"
            t0 = time.perf_counter()
            csearch("run", "--workload", "digits-cnn", "--study", study, "--storage", url,
                    "--space", space,
                    "--trials", str(a.trials), "--seed", str(seed), "--quiet",
                    "--artifacts", "none", "--objective", "accuracy:max",
                    "--objective", "size_mb:min", "--constraint", "accuracy_drop<=0.01")
            best[label] = b = best_feasible(url, study)
            took = time.perf_counter() - t0
            if b is None:
                print(f"seed {seed} {label:9s}: no feasible trial ({took:.0f} s)")
                continue
            m = b["metrics"]
            print(f"seed {seed} {label:9s}: smallest {m['size_mb'] * 1e3:.2f} kB at drop "
                  f"{m['accuracy_drop'] * 100:.2f} pt (trial {b['number']}, "
                  f"{m['effective_bits']:.2f} effective bits, {took:.0f} s)\n"
                  f"    {b['params']}")
        if best["global"] and best["per-group"]:
            r = best["global"]["metrics"]["size_mb"] / best["per-group"]["metrics"]["size_mb"]
            ratios.append(r)
            print(f"seed {seed}: global / per-group size = {r:.3f}")
    if ratios:
        print(f"per-group smaller in {sum(r > 1 for r in ratios)} of {len(ratios)} seeds; "
              f"median ratio {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
