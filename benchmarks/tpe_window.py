"""Search quality of csearch's default sampler (`WindowedTPESampler`: past 300 trials, TPE
models the 100 best feasible trials so far + the 300 most recent trials) against
Optuna's TPESampler with the same settings (multivariate, grouped, constant liar, same
seed).

    python benchmarks/tpe_window.py --replay              # digits tpe+warm, 40 real trials
    python benchmarks/tpe_window.py --problem dtlz2c --trials 1500 --seeds 0 1 2
    python benchmarks/tpe_window.py --problem joint --trials 1500 --seeds 0
    python benchmarks/tpe_window.py --summary benchmarks/results/tpe_window.jsonl

--replay: a 40-trial digits study started as `csearch run` starts one (sensitivity pass,
warm-start seeds; `search_efficiency.py`'s `tpe+warm`) with the default sampler and real
evaluations; then the same history is replayed through Optuna's TPESampler: at each
trial it suggests, its parameters are compared with the recorded trial's, and the
recorded outcome (values, constraints, state) is told. Every suggestion equal means
search_efficiency.py's 40-trial figures for the default are unchanged (measured latency
varies from run to run, so rerunning the benchmark could not show this).

--problem: both samplers on a cheap synthetic problem with a constraint, `--trials` each,
per seed, in this process one after the other; hypervolume of the feasible trials after
100, 300, 500, 1000, ... trials, and the sampler's time per trial over the last 100.
- `dtlz2c`: DTLZ2 with 3 objectives and 8 variables, feasible when f1 + f2 + f3 >= 1.4
  (the corners of the front are infeasible); reference point (1.1, 1.1, 1.1).
- `joint`: the digits `joint` space expanded to 4 layer groups (27 conditional
  parameters) with `scale.py`'s synthetic digits-shaped metrics (accuracy max,
  latency_ms min, size_mb min; accuracy_drop <= 0.01 and the memory budget as
  constraints); hypervolume of (1 - accuracy, latency_ms, size_mb) / (0.05, 12, 0.6).
Each finished run is appended to --out as one JSON line; --summary reprints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import time
import warnings

import numpy as np
import optuna
from optuna.trial import TrialState

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scale import MEMORY_CONSTRAINT, fake_metrics, optuna_tpe  # noqa: E402

from search.samplers import TPE_BEST, TPE_WINDOW, make_sampler  # noqa: E402

warnings.filterwarnings("ignore")
optuna.logging.set_verbosity(optuna.logging.WARNING)
GROUPS = ["conv1", "conv2", "fc1", "fc2"]
CHECKPOINTS = (100, 300, 500, 1000, 1500, 2000, 3000)


def hypervolume(points: list[np.ndarray], ref: np.ndarray) -> float:
    from optuna._hypervolume import compute_hypervolume

    inside = [p for p in points if np.all(p < ref)]
    return float(compute_hypervolume(np.array(inside), ref)) if inside else 0.0


class Dtlz2c:
    """DTLZ2 (M=3, n=8), minimised, feasible when f1 + f2 + f3 >= 1.4."""

    directions = ["minimize"] * 3
    ref = np.array([1.1, 1.1, 1.1])

    def __init__(self, seed: int) -> None:
        pass

    def __call__(self, trial: optuna.Trial) -> tuple[TrialState, list[float] | None]:
        x = [trial.suggest_float(f"x{i}", 0.0, 1.0) for i in range(8)]
        g = sum((v - 0.5) ** 2 for v in x[2:])
        a, b = x[0] * math.pi / 2, x[1] * math.pi / 2
        f = [(1 + g) * math.cos(a) * math.cos(b), (1 + g) * math.cos(a) * math.sin(b),
             (1 + g) * math.sin(a)]
        trial.set_constraint("f1+f2+f3>=1.4", 1.4 - sum(f))
        return TrialState.COMPLETE, f

    @staticmethod
    def point(values: list[float]) -> np.ndarray:
        return np.array(values)


class Joint:
    """The digits `joint` space (4 groups) with scale.py's synthetic metrics and records."""

    directions = ["maximize", "minimize", "minimize"]
    ref = np.array([1.0, 1.0, 1.0])
    scale = np.array([0.05, 12.0, 0.6])

    def __init__(self, seed: int) -> None:
        from search.spec import StudySpec
        from spaces import load_space

        self.space = load_space("joint").expand(GROUPS, {"prune.amount": GROUPS,
                                                         "prune.threshold": GROUPS})
        self.spec = StudySpec(workload="digits-cnn", space="joint", space_toml="",
                              constraints=("accuracy_drop<=0.01",), seed=seed)
        self.rng = random.Random(seed)

    def __call__(self, trial: optuna.Trial) -> tuple[TrialState, list[float] | None]:
        self.space.sample(trial)
        m, margin = fake_metrics(trial.params, self.rng)
        fate = self.rng.random()
        if fate < 0.02:
            return TrialState.PRUNED, None
        if fate < 0.025:
            return TrialState.FAIL, None
        for c in self.spec.parsed_constraints():
            trial.set_constraint(str(c), c.value(m))
        trial.set_constraint(MEMORY_CONSTRAINT, margin)
        return TrialState.COMPLETE, [m[k] for k in self.spec.metric_names]

    def point(self, values: list[float]) -> np.ndarray:
        return np.array([1 - values[0], values[1], values[2]]) / self.scale


PROBLEMS = {"dtlz2c": Dtlz2c, "joint": Joint}


def run_problem(problem: str, sampler_name: str, seed: int, trials: int) -> dict:
    """One study of `trials` trials: hypervolume at the checkpoints, sampler seconds."""
    prob = PROBLEMS[problem](seed)
    sampler = make_sampler("tpe", seed, None) if sampler_name == "windowed" else \
        optuna_tpe(seed)
    study = optuna.create_study(directions=prob.directions, sampler=sampler)
    points: list[np.ndarray] = []
    hv: dict[int, float] = {}
    suggest: list[float] = []  # seconds per trial: ask + the sampler's suggestions
    for i in range(1, trials + 1):
        t0 = time.perf_counter()
        trial = study.ask()
        t_ask = time.perf_counter() - t0
        t0 = time.perf_counter()
        state, values = prob(trial)  # the sampler runs inside the first suggest
        t_eval = time.perf_counter() - t0
        suggest.append(t_ask + t_eval)  # the problems' own arithmetic is microseconds
        if state == TrialState.COMPLETE:
            study.tell(trial, values)
            if all(v <= 0 for v in study._storage.get_trial(trial._trial_id).constraints
                   .values()):
                points.append(prob.point(values))
        else:
            study.tell(trial, state=state)
        if i in CHECKPOINTS or i == trials:
            hv[i] = hypervolume(points, prob.ref)
    return {"problem": problem, "sampler": sampler_name, "seed": seed, "trials": trials,
            "window": TPE_WINDOW, "best": TPE_BEST, "hv": hv, "sampler_s": sum(suggest),
            "ms_per_trial_last100": 1e3 * statistics.mean(suggest[-100:]),
            "feasible": len(points)}


def replay(seed: int, trials: int) -> None:
    """Real digits trials with the default sampler, then the same history through
    Optuna's TPESampler: does it suggest exactly the same configuration every time?"""
    from search_efficiency import warm_start

    from search.runner import TrialObjective
    from search.spec import DEFAULT_OBJECTIVES
    from search.study import build_spec, load_context

    spec = build_spec(workload="digits-cnn", space="joint", objectives=DEFAULT_OBJECTIVES,
                      constraints=(), sampler="tpe", seed=seed, device="cpu", trials=trials,
                      timeout=None, memory_budget_mb=None, artifacts=None)
    base = load_context(spec)
    study = optuna.create_study(directions=base.spec.directions,
                                sampler=make_sampler("tpe", seed, base.space))
    ctx = warm_start(study, base)
    t0 = time.perf_counter()
    study.optimize(TrialObjective(ctx), n_trials=trials, catch=(Exception,))
    print(f"default sampler: {trials} real digits trials in {time.perf_counter() - t0:.0f}s, "
          f"states {dict((s.name, n) for s, n in _count(study).items())}, "
          f"{len(study.best_trials)} on the feasible front", flush=True)

    again = optuna.create_study(directions=base.spec.directions, sampler=optuna_tpe(seed))
    ctx2 = warm_start(again, base)
    same = 0
    for orig in study.get_trials(deepcopy=False):
        t = again.ask()
        ctx2.space.sample(t)
        if t.params != orig.params:
            print(f"trial {orig.number}: Optuna's TPE suggests {t.params}, "
                  f"the default suggested {orig.params}")
            break
        same += 1
        for key, value in orig.system_attrs.items():
            if key.startswith("constraints"):
                again._storage.set_trial_system_attr(t._trial_id, key, value)
        for key, value in orig.user_attrs.items():
            t.set_user_attr(key, value)
        for step, value in orig.intermediate_values.items():
            again._storage.set_trial_intermediate_value(t._trial_id, step, value)
        if orig.state == TrialState.COMPLETE:
            again.tell(t, orig.values)
        else:
            again.tell(t, state=orig.state)
    queued = sum("fixed_params" in t.system_attrs for t in study.get_trials(deepcopy=False))
    print(f"replayed through Optuna's TPESampler (seed {seed}): {same} of {trials} "
          f"suggestions identical ({queued} warm-start configs queued, the rest sampled) -> "
          f"search_efficiency's tpe+warm at {trials} trials is "
          f"{'unchanged' if same == trials else 'CHANGED'} (window {TPE_WINDOW})")


def _count(study: optuna.Study) -> dict[TrialState, int]:
    out: dict[TrialState, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state] = out.get(t.state, 0) + 1
    return out


def summarize(rows: list[dict]) -> None:
    for problem in dict.fromkeys(r["problem"] for r in rows):
        rs = [r for r in rows if r["problem"] == problem]
        n = min(r["trials"] for r in rs)
        cps = [c for c in CHECKPOINTS if c <= n]
        print(f"\n{problem}: hypervolume of the feasible trials (mean over seeds; per seed "
              f"at {n}), sampler ms per trial over the last 100 trials")
        print("sampler    seeds  " + "  ".join(f"HV@{c:<5d}" for c in cps)
              + "  per seed at the end            ms/trial")
        for name in ("optuna", "windowed"):
            sub = [r for r in rs if r["sampler"] == name]
            if not sub:
                continue
            means = [statistics.mean(r["hv"][str(c)] if str(c) in r["hv"] else r["hv"][c]
                                     for r in sub) for c in cps]
            ends = ", ".join(f"{_hv(r, n):.4f}" for r in sorted(sub, key=lambda r: r["seed"]))
            ms = statistics.mean(r["ms_per_trial_last100"] for r in sub)
            print(f"{name:9s} {len(sub):6d}  " + "  ".join(f"{v:8.4f}" for v in means)
                  + f"  [{ends}]".ljust(33) + f"{ms:8.1f}")
        for name in ("windowed",):
            paired = [(_hv(a, n), _hv(b, n)) for a in rs for b in rs
                      if a["sampler"] == name and b["sampler"] == "optuna"
                      and a["seed"] == b["seed"]]
            ratios = [w / o for w, o in paired if o > 0]
            if ratios:
                print(f"{name} / Optuna's TPE hypervolume at {n} trials, per seed: "
                      + ", ".join(f"{x:.3f}" for x in ratios)
                      + f" (mean {statistics.mean(ratios):.3f})")


def _hv(r: dict, n: int) -> float:
    hv = r["hv"]
    return hv[str(n)] if str(n) in hv else hv[n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replay", action="store_true")
    ap.add_argument("--problem", choices=sorted(PROBLEMS))
    ap.add_argument("--trials", type=int, default=None,
                    help="per study (default 40 for --replay, 1500 for --problem)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--samplers", default="optuna,windowed")
    ap.add_argument("--out", default="benchmarks/results/tpe_window.jsonl")
    ap.add_argument("--summary", metavar="JSONL")
    a = ap.parse_args()
    print(f"optuna {optuna.__version__}; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    if a.summary:
        summarize([json.loads(line) for line in open(a.summary)])
        return
    if a.replay:
        replay(a.seeds[0], a.trials or 40)
        return
    if not a.problem:
        ap.error("give --replay, --problem or --summary")
    rows = []
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    for seed in a.seeds:
        for name in a.samplers.split(","):
            t0 = time.perf_counter()
            r = run_problem(a.problem, name, seed, a.trials or 1500)
            rows.append(r)
            with open(a.out, "a") as f:
                f.write(json.dumps(r) + "\n")
            print(f"{a.problem} {name} seed {seed}: HV {_hv(r, r['trials']):.4f} after "
                  f"{r['trials']} trials, {r['feasible']} feasible; sampler "
                  f"{r['sampler_s']:.0f}s in all, {r['ms_per_trial_last100']:.1f} ms per "
                  f"trial at the end; {time.perf_counter() - t0:.0f}s", flush=True)
    summarize(rows)
    print(f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
