"""Scale: `csearch pareto` on a 10,000-trial study, per-trial storage and sampler
overhead at 1,000 / 5,000 / 10,000 trials, and resident memory per worker per 10,000
trials; all in one run.

    python benchmarks/scale.py            # 10,000 trials, checkpoints 1k/5k/10k
    python benchmarks/scale.py --quick    # 2,000 trials, checkpoints 500/1k/2k

How:
- The study is created by `csearch create` (digits, joint space, so it has a real spec and
  baseline) in a SQLite file, then filled through ask/tell: parameters are sampled by
  csearch's `Space.sample` with a RandomSampler (in memory, fast), metrics are synthetic
  but shaped like digits results (accuracy falls with sparsity and few bits, size follows
  sparsity and bits, latency with batch and cache), with the memory-budget constraint and
  the same user attrs a real trial stores. Finished trials are written to the SQLite
  study with `add_trials`.
- Storage overhead per trial at N: on the SQLite study holding N trials, the bookkeeping
  csearch does per trial (ask, eval_seed/worker/metrics user attrs, constraint, legacy
  constraints attr, tell) with a RandomSampler, median of 20.
- Sampler overhead at N: the default sampler (`search.samplers.make_sampler("tpe")`,
  multivariate grouped TPE with constant liar) suggesting one full joint-space config
  on an in-memory study holding N trials (ask + `Space.sample`), median of 5 (3 at 10k);
  and on the SQLite study (median of 3 after one warm-up ask, as in a running worker
  whose storage cache holds the finished trials).
- A digits trial's time is measured in the same run (3 real evaluations of random
  configs, median) so the sampler's share of a trial is a same-run ratio. Goal: < 5% at
  1,000 trials.
- `csearch pareto --format json` on the full study as a subprocess (goal <= 5 s), and
  `csearch report` if this tree has `search/report.py` (goal <= 30 s).
- Memory: VmRSS of a fresh process before and after loading the 10k study and asking the
  default sampler for one trial.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import optuna
from optuna.trial import TrialState

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import CLI, env, machine, now  # noqa: E402

from search.runner import LEGACY_CONSTRAINTS_ATTR, MEMORY_CONSTRAINT  # noqa: E402
from search.samplers import make_sampler  # noqa: E402
from search.storage import open_storage  # noqa: E402
from spaces import load_space  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
warnings.filterwarnings("ignore")
optuna.logging.set_verbosity(optuna.logging.WARNING)


def fake_metrics(p: dict, rng: random.Random) -> tuple[dict, float]:
    sparsity = {"none": 0.0, "magnitude": min(0.95, p.get("prune.threshold", 0) * 5),
                "global": p.get("prune.amount", 0),
                "structured": p.get("prune.structured_ratio", 0)}[p["prune.method"]]
    bits = {"none": 32, "int8_dynamic": 8, "lowbit": p.get("quant.bits", 8)}[p["quant.method"]]
    acc = 0.988 - 0.3 * max(0.0, sparsity - 0.8) ** 1.5 - (0.4 if bits <= 2 else 0.02 / bits)
    acc = max(0.1, acc - rng.random() * 0.01 + 0.003 * p["train.epochs"] / 4)
    size = 0.556 * (1 - sparsity * 0.9) * bits / 32 + 0.003
    cache = p["serve.cache_ratio"]
    hit = min(0.9, cache * 1.5)
    lat = (0.0005 if hit > 0.5 else 1 + 10 * (1 - hit)) * (1 + rng.random() * 0.2)
    memory = size + cache + p["serve.memory_ratio"]
    m = {"accuracy": acc, "accuracy_drop": 0.988 - acc, "latency_ms": lat,
         "latency_p99_ms": lat * 20 + 5, "throughput_rps": 5000 * (1 + hit),
         "cache_hit_rate": hit, "memory_mb": memory, "max_batch": float(p["serve.batch_size"]),
         "size_mb": size, "sparsity": sparsity, "rejected_early": 0.0,
         "eval_seconds": 2 + rng.random() * 10}
    return m, memory - 1.0


def fill(mem: optuna.Study, space: object, n: int, seed: int) -> None:
    rng = random.Random(seed)
    mem.sampler = optuna.samplers.RandomSampler(seed=seed)
    for _ in range(n):
        t = mem.ask()
        cfg_params = space.sample(t)  # noqa: F841 - suggests every active parameter
        m, margin = fake_metrics(t.params, rng)
        t.set_user_attr("eval_seed", t.number)
        t.set_user_attr("worker", "bench:0")
        t.set_user_attr("metrics", m)
        t.set_constraint(MEMORY_CONSTRAINT, margin)
        t.storage.set_trial_system_attr(t._trial_id, LEGACY_CONSTRAINTS_ATTR, [margin])
        mem.tell(t, [m["accuracy"], m["latency_ms"], m["size_mb"]])


def bookkeeping(study: optuna.Study, space: object, reps: int) -> float:
    """Median seconds of one trial's csearch storage writes (random sampler)."""
    rng = random.Random(1)
    study.sampler = optuna.samplers.RandomSampler(seed=1)
    times = []
    for _ in range(reps):
        t0 = now()
        t = study.ask()
        space.sample(t)
        m, margin = fake_metrics(t.params, rng)
        t.set_user_attr("eval_seed", t.number)
        t.set_user_attr("worker", "bench:0")
        t.set_user_attr("metrics", m)
        t.set_constraint(MEMORY_CONSTRAINT, margin)
        t.storage.set_trial_system_attr(t._trial_id, LEGACY_CONSTRAINTS_ATTR, [margin])
        study.tell(t, [m["accuracy"], m["latency_ms"], m["size_mb"]])
        times.append(now() - t0)
    return statistics.median(times)


def sampler_time(study: optuna.Study, space: object, reps: int) -> float:
    """Median seconds for the default sampler to suggest one config (trial then failed)."""
    times = []
    for i in range(reps):
        study.sampler = make_sampler("tpe", 100 + i, space)
        t0 = now()
        t = study.ask()
        space.sample(t)
        times.append(now() - t0)
        study.tell(t, state=TrialState.FAIL)
    return statistics.median(times)


def digits_trial_seconds(n: int) -> float:
    from objectives import evaluate, load_workload
    from search.study import baseline_config  # noqa: F401

    w = load_workload("digits-cnn")
    space = load_space("joint")
    st = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=7))
    times = []
    for _ in range(n):
        t = st.ask()
        cfg = space.sample(t)
        t0 = now()
        evaluate(w, cfg, budget_mb=1.0, seed=t.number)
        times.append(now() - t0)
        st.tell(t, 0.0)
    return statistics.median(times)


def rss_child(url: str, name: str) -> str:
    code = (
        "import re,sys,warnings;warnings.filterwarnings('ignore');"
        "sys.path.insert(0,sys.argv[3]);"
        "rss=lambda:int(re.search(r'VmRSS:\\s+(\\d+)',open('/proc/self/status').read())[1])/1024;"
        "import optuna,torch;optuna.logging.set_verbosity(optuna.logging.WARNING);"
        "from search.samplers import make_sampler;from search.storage import open_storage;"
        "from spaces import load_space;sp=load_space('joint');a=rss();"
        "st=optuna.load_study(study_name=sys.argv[2],storage=open_storage(sys.argv[1],heartbeat=False));"
        "ts=st.get_trials(deepcopy=False);st.sampler=make_sampler('tpe',0,sp);t=st.ask();sp.sample(t);"
        "b=rss();print(f'{len(ts)} trials: RSS {a:.0f} MB before loading, {b:.0f} MB after '"
        "f'loading + one TPE suggest: +{b-a:.0f} MB ({(b-a)/len(ts)*1e4:.0f} MB per 10,000 trials)')"
    )
    r = subprocess.run([sys.executable, "-c", code, url, name, ROOT], capture_output=True,
                       text=True, env=env())
    return (r.stdout or r.stderr).strip()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=10000)
    ap.add_argument("--checkpoints", default="1000,5000,10000")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--digits-trials", type=int, default=3)
    a = ap.parse_args()
    if a.quick:
        a.trials, a.checkpoints = 2000, "500,1000,2000"
    checkpoints = [int(c) for c in a.checkpoints.split(",")]
    print(f"machine: {machine()}, optuna {optuna.__version__}")
    space = load_space("joint")
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/scale.db"
        name = "scale"
        r = subprocess.run([*CLI, "create", "--storage", url, "--study", name, "--trials",
                            str(a.trials * 2), "--artifacts", "none", "--device", "cpu"],
                           env=env(PYTHONPATH=ROOT), cwd=tmp, capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(r.stderr)
        storage = open_storage(url, heartbeat=False)
        disk = optuna.load_study(study_name=name, storage=storage)
        mem = optuna.create_study(directions=disk.directions)
        digits = digits_trial_seconds(a.digits_trials)
        print(f"digits trial (median of {a.digits_trials} random joint configs): {digits:.2f}s")
        copied = 0  # trials of `mem` already copied to the SQLite study
        for n in checkpoints:
            t0 = now()
            fill(mem, space, max(0, n - len(mem.get_trials(deepcopy=False))), seed=n)
            t_fill = now() - t0
            new = mem.get_trials(deepcopy=False)[copied:]
            t0 = now()
            disk.add_trials(new)
            t_add = now() - t0
            copied += len(new)
            print(f"N={n}: filled +{len(new)} via ask/tell in memory {t_fill:.1f}s, "
                  f"add_trials to SQLite {t_add:.1f}s")
            s_mem = sampler_time(mem, space, 3 if n >= 10000 else 5)
            sampler_time(disk, space, 1)  # first ask after add_trials fills the trial cache
            s_disk = sampler_time(disk, space, 3)  # warm, as in a worker that runs on
            book = bookkeeping(disk, space, 20)
            print(f"  default TPE suggest: {s_mem * 1e3:.0f} ms in memory, {s_disk * 1e3:.0f} ms "
                  f"on SQLite = {s_disk / digits:.1%} of a digits trial; "
                  f"storage bookkeeping per trial {book * 1e3:.0f} ms = {book / digits:.1%}")
        total = len(disk.get_trials(deepcopy=False))
        t0 = now()
        r = subprocess.run([*CLI, "pareto", "--storage", url, "--study", name, "--format", "json"],
                           env=env(PYTHONPATH=ROOT), cwd=tmp, capture_output=True, text=True)
        t_p = now() - t0
        rows = len(json.loads(r.stdout)) if r.returncode == 0 else 0
        print(f"csearch pareto --format json on {total} trials: {t_p:.2f}s (goal <= 5 s), "
              f"rc {r.returncode}, {rows} front rows")
        if os.path.exists(os.path.join(ROOT, "search", "report.py")):
            t0 = now()
            r = subprocess.run([*CLI, "report", "--storage", url, "--study", name, "-o",
                                f"{tmp}/r.html"], env=env(PYTHONPATH=ROOT), cwd=tmp,
                               capture_output=True, text=True)
            print(f"csearch report on {total} trials: {now() - t0:.2f}s (goal <= 30 s), "
                  f"rc {r.returncode}")
        else:
            print("csearch report: search/report.py is not in this tree; not measured")
        print("memory per worker:", rss_child(url, name))


if __name__ == "__main__":
    main()
