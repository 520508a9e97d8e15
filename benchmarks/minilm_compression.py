"""Issue 8 acceptance on MiniLM: does `csearch run --workload minilm --space compression
--trials 40` find a model with fidelity >= 0.99 that is >= 2x smaller and >= 1.5x faster
than fp32?

    python benchmarks/minilm_compression.py [--trials 40] [--storage URL] [--recheck 3]

1. Runs the command (default objectives accuracy, latency_ms, size_mb; no constraint).
2. Against the study's stored baseline (the fp32 model measured by the same serve replay
   at study creation): every trial's size ratio (packed artifact bytes) and speed ratio
   (median replay latency), the trials meeting all three goals, and the Pareto front.
3. `--recheck N`: the baseline and the best qualifying trial's config are evaluated again
   N times alternately in one process, so the speed ratio is also shown as a same-run
   ratio (the baseline was timed minutes before the trials, under other load).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import csearch, load, machine  # noqa: E402

GOALS = {"fidelity": 0.99, "smaller": 2.0, "faster": 1.5}


def ratios(trial, base: dict) -> tuple[float, float, float]:
    m = trial.user_attrs["metrics"]
    return m["accuracy"], base["size_mb"] / m["size_mb"], base["latency_ms"] / m["latency_ms"]


def recheck(study, number: int, n: int) -> None:
    from optuna.trial import FixedTrial

    from objectives import evaluate
    from search.study import baseline_config, load_context, stored_spec

    ctx = load_context(stored_spec(study), stored=True)
    trial = study.trials[number]
    config = ctx.space.sample(FixedTrial(trial.params, number))
    base_ms, trial_ms = [], []
    for _ in range(n):
        for cfg, out in ((baseline_config(), base_ms), (config, trial_ms)):
            ev = evaluate(ctx.workload, cfg, budget_mb=ctx.budget_mb, device=ctx.device,
                          seed=trial.user_attrs.get("eval_seed", 0))
            out.append(ev.metrics["latency_ms"])
    print(f"recheck, {n} alternating evaluations in one process: fp32 median "
          f"{statistics.median(base_ms):.1f} ms, trial {number} median "
          f"{statistics.median(trial_ms):.1f} ms: "
          f"{statistics.median(base_ms) / statistics.median(trial_ms):.2f}x faster "
          f"(fidelity {ev.metrics['accuracy']:.4f})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--storage", default=None)
    ap.add_argument("--study", default="minilm-compression")
    ap.add_argument("--recheck", type=int, default=3)
    a = ap.parse_args()
    url = a.storage or f"sqlite:///{tempfile.mkdtemp()}/minilm.db"
    print(f"machine: {machine()}; {time.strftime('%Y-%m-%d %H:%M')}; load "
          f"{os.getloadavg()[0]:.1f}")
    t0 = time.perf_counter()
    csearch("run", "--workload", "minilm", "--space", "compression", "--trials",
            str(a.trials), "--study", a.study, "--storage", url, "--quiet",
            "--artifacts", "none")
    wall = time.perf_counter() - t0
    study = load(a.study, url)
    base = study.user_attrs["baseline"]
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    print(f"`csearch run --workload minilm --space compression --trials {a.trials}`: "
          f"{wall / 60:.1f} min, {len(done)} complete; fp32 baseline {base['size_mb']:.2f} MB, "
          f"{base['latency_ms']:.1f} ms median replay latency")
    good = []
    for t in done:
        fid, smaller, faster = ratios(t, base)
        if (fid >= GOALS["fidelity"] and smaller >= GOALS["smaller"]
                and faster >= GOALS["faster"]):
            good.append((faster * smaller, t))
    print(f"trials meeting fidelity >= 0.99, >= 2x smaller, >= 1.5x faster: "
          f"{len(good)} of {len(done)}")
    front = {t.number for t in study.best_trials}
    print(f"{'#':>3} {'fidelity':>8} {'smaller':>7} {'faster':>6}  front  params")
    for t in sorted(done, key=lambda t: -ratios(t, base)[0]):
        fid, smaller, faster = ratios(t, base)
        if t.number in front or fid >= GOALS["fidelity"]:
            params = {k: (round(v, 5) if isinstance(v, float) else v)
                      for k, v in t.params.items()}
            print(f"{t.number:>3} {fid:8.4f} {smaller:6.2f}x {faster:5.2f}x  "
                  f"{'*' if t.number in front else ' ':^5}  {params}")
    if good and a.recheck > 0:
        best = max(good, key=lambda g: g[0])[1]
        recheck(study, best.number, a.recheck)


if __name__ == "__main__":
    main()
