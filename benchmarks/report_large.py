"""Time `csearch report` on a large study filled quickly (no model is trained).

    PYTHONPATH=. python benchmarks/report_large.py --trials 10000 --storage sqlite:////tmp/big.db

Trials are sampled from the built-in `joint` space with a seeded random sampler and get
metrics from a smooth made-up model of the real ones (accuracy falls with sparsity and low
bits, size with both, cache hit rate rises with the cache share, throughput with the
workspace share, memory = weights + cache + workspace checked against a 1 MB budget), with
the same user attrs, constraints and legacy `constraints` system attr as real trials.
The synthetic metrics only exercise the report; they measure nothing.
"""

from __future__ import annotations

import argparse
import random
import time
import warnings
from datetime import datetime, timedelta

import optuna
from optuna.trial import create_trial

from search.spec import BASELINE_ATTR, ENV_ATTR, SPEC_ATTR, StudySpec

BASELINE = {"accuracy": 0.988, "accuracy_drop": 0.0, "latency_ms": 3.45, "latency_p99_ms": 151.0,
            "throughput_rps": 5577.0, "cache_hit_rate": 0.0, "memory_mb": 0.806,
            "size_mb": 0.556, "sparsity": 0.0, "eval_seconds": 1.5, "memory_budget_mb": 1.0}


def synthetic_metrics(p: dict, rng: random.Random) -> dict[str, float]:
    sparsity = {"none": 0.0, "magnitude": min(0.95, 4 * p.get("prune.threshold", 0.0)),
                "global": p.get("prune.amount", 0.0),
                "structured": p.get("prune.structured_ratio", 0.0)}.get(p["prune.method"], 0.0)
    bits = {"none": 32, "int8_dynamic": 8}.get(p["quant.method"], p.get("quant.bits", 8))
    drop = max(0.0, 0.15 * sparsity ** 4 + 0.02 * max(0, 6 - bits) ** 1.5 / 8
               - 0.002 * p.get("train.epochs", 0) + rng.gauss(0, 0.002))
    size = BASELINE["size_mb"] * (1 - 0.8 * sparsity) * bits / 32 + 0.002
    beta, gamma = p["serve.cache_ratio"], p["serve.memory_ratio"]
    hit = min(0.95, 1.6 * beta / (beta + 0.2)) * (0.9 + 0.1 * rng.random())
    rps = 400 + 20000 * gamma / (gamma + 0.1) * (1 - hit) ** 0.5 + 15000 * hit
    lat = 1000 / rps * bits / 32 * (1 + rng.random())
    mem = size + beta * 1.0 + gamma * 1.0
    return {"accuracy": BASELINE["accuracy"] - drop, "accuracy_drop": drop, "latency_ms": lat,
            "latency_mean_ms": lat * (1 + 4 * (1 - hit)), "model_latency_ms": 2 * lat,
            "latency_p99_ms": 20 * lat, "throughput_rps": rps, "cache_hit_rate": hit,
            "memory_mb": mem, "size_mb": size, "sparsity": sparsity,
            "eval_seconds": 0.3 + rng.random()}


def fill_study(storage: str | optuna.storages.BaseStorage, name: str, n: int, *, seed: int = 0,
               workers: int = 4, constraints: tuple[str, ...] = ("accuracy_drop<=0.01",),
               n_pruned: int = 0, n_failed: int = 0) -> optuna.Study:
    """A csearch-like study of `n` COMPLETE trials (plus pruned/failed ones) in seconds."""
    from spaces import load_space

    space = load_space("joint")
    spec = StudySpec(workload="digits-cnn", space="joint", space_toml=space.source,
                     constraints=constraints, trials=n + n_pruned + n_failed, seed=seed)
    study = optuna.create_study(storage=storage, study_name=name, directions=spec.directions)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(spec.metric_names)
    study.set_user_attr(SPEC_ATTR, spec.to_dict())
    study.set_user_attr(BASELINE_ATTR, BASELINE)
    study.set_user_attr(ENV_ATTR, {"device": "cpu", "device_name": "x86_64",
                                   "torch": "synthetic", "threads": 2})
    rng = random.Random(seed)
    sampler = optuna.samplers.RandomSampler(seed=seed)
    scratch = optuna.create_study(sampler=sampler, directions=spec.directions)
    t0 = datetime(2026, 1, 1)
    clock = [t0] * workers
    frozen = []
    states = ([optuna.trial.TrialState.COMPLETE] * n + [optuna.trial.TrialState.PRUNED] * n_pruned
              + [optuna.trial.TrialState.FAIL] * n_failed)
    rng.shuffle(states)
    for i, state in enumerate(states):
        trial = scratch.ask()
        space.sample(trial)
        params, dists = trial.params, trial.distributions
        m = synthetic_metrics(params, rng)
        w = i % workers
        start = clock[w]
        end = start + timedelta(seconds=m["eval_seconds"])
        clock[w] = end
        user = {"worker": f"host:{1000 + w}", "eval_seed": seed + i}
        system: dict = {}
        values = None
        if state == optuna.trial.TrialState.COMPLETE:
            user["metrics"] = m
            cons = [c.value(m) for c in spec.parsed_constraints()]
            cons.append(m["memory_mb"] - BASELINE["memory_budget_mb"])
            keys = [str(c) for c in spec.parsed_constraints()] + ["memory_budget"]
            system = {f"constraints:{k}": v for k, v in zip(keys, cons)}
            system["constraints"] = cons
            values = [m[k] for k in spec.metric_names]
        elif state == optuna.trial.TrialState.PRUNED:
            user["pruned_reason"] = "accuracy far below the guard after epoch 1"
        else:
            user["fail_reason"] = "RuntimeError: synthetic failure"
        scratch.tell(trial, state=optuna.trial.TrialState.FAIL)  # keep the scratch small
        frozen.append(create_trial(state=state, params=params, distributions=dists,
                                   values=values, user_attrs=user, system_attrs=system))
        frozen[-1].datetime_start, frozen[-1].datetime_complete = start, end
    study.add_trials(frozen)
    return study


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=10000)
    ap.add_argument("--storage", default="journal:////tmp/csearch-report-large.log",
                    help="journal:///FILE fills 10,000 trials in about a minute; SQLite "
                         "inserts trial by trial (about 0.1 s each)")
    ap.add_argument("--study", default="large")
    ap.add_argument("-o", "--output", default="/tmp/csearch-report-large.html")
    a = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t = time.perf_counter()
    from search.storage import open_storage, resolve_url

    url = resolve_url(a.storage)
    study = fill_study(open_storage(url, create=True, heartbeat=False), a.study, a.trials)
    print(f"filled {a.trials} trials in {time.perf_counter() - t:.1f}s")
    from search.report import write_report

    t = time.perf_counter()  # a fresh process's view: open, load, collect, draw, write
    study = optuna.load_study(study_name=a.study,
                              storage=open_storage(url, create=False, heartbeat=False))
    rep = write_report(study, a.output, url)
    took = time.perf_counter() - t
    import os

    print(f"report {a.output}: {os.path.getsize(a.output) / 1e6:.2f} MB in {took:.1f}s; "
          + ", ".join(f"{k} {v:.2f}s" for k, v in rep.timings.items()))
    print(f"pareto front {len(rep.table.rows)} trials; hypervolume "
          f"{rep.hypervolume.hypervolume[-1] if rep.hypervolume.hypervolume else 0:.4f}")


if __name__ == "__main__":
    main()
