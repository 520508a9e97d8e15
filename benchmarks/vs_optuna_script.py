"""csearch against the same digits search written by hand with plain Optuna, in one run.

    python benchmarks/vs_optuna_script.py            # 20 trials per side
    python benchmarks/vs_optuna_script.py --quick    # 8 trials per side
    python benchmarks/vs_optuna_script.py --plain-only --trials 5   # (used internally)

Sides (each a fresh subprocess with its own SQLite file, run back to back, in the order
csearch, plain-same, plain-default, and the clock is the subprocess's wall time, so every
side pays its own imports and start-up):
- csearch: `csearch run --trials N --seed 0 --device cpu` (digits-cnn, joint space,
  default tpe sampler, artifacts uploaded, baseline evaluated: everything csearch does).
- plain-same: the script a careful user writes (`plain_study` below): the digits data and
  base model loaded once, one `trial.suggest_*` per parameter of the joint space written
  out by hand, the same `objectives.evaluate` call (prune -> QAT fine-tune -> quantize ->
  pack -> measure -> serve), metrics and feasibility stored as user attrs, SQLite storage,
  and the same sampler settings as csearch (multivariate grouped TPE, constant liar, seed
  0). It also queues the configurations the csearch side queued (its warm-start and
  sensitivity seeds, read from that side's study: the csearch side runs first), so both
  sides start with the same work. Same parameters in the same order with the same sampler
  and seed then give the same configs until measured latencies steer the two TPEs apart.
- plain-default: the same script with Optuna's default sampler (`TPESampler(seed=0)`,
  independent), which is what a user who does not tune the sampler gets.

- plain-replay: plain-same, except that trial k evaluates the csearch side's k-th config
  (it still samples and stores its own parameters with the same sampler): the same
  evaluations as csearch, so its trials per minute differ from csearch's only by what
  each tool does around them. The free-searching sides pick different configs once
  measured latencies steer them apart, and a digits trial costs 0.1-3 s depending on its
  epochs and serving knobs, which can outweigh the tool's own time either way.
Reported: trials per minute of each side, csearch / plain ratio (goal >= 1.0, "not
slower"), and the hypervolume (same fixed reference point as search_efficiency.py) of
the feasible trials each side had finished at equal wall time T = the shortest side's
wall time, measured from each subprocess's start.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GROUPS = ("conv1", "conv2", "fc1", "fc2")  # digits-cnn's layer groups
REF = np.array([0.05, 12.0, 0.6])  # 1 - accuracy, latency_ms, size_mb (as search_efficiency)


def plain_study(url: str, trials: int, sampler_kind: str, enqueue: list[dict],
                replay: list[dict] | None = None) -> None:
    """What a careful user writes with plain Optuna (run in its own process). With
    `replay`, trial k still samples and stores its own parameters, but evaluates
    replay[k] (the csearch side's k-th config), so both sides do the same evaluations."""
    import optuna

    from objectives import evaluate, load_workload
    from spaces import Config

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    workload = load_workload("digits-cnn")  # data + base model, once
    if sampler_kind == "same":
        sampler = optuna.samplers.TPESampler(multivariate=True, group=True, constant_liar=True,
                                             seed=0)
    else:
        sampler = optuna.samplers.TPESampler(seed=0)

    def objective(trial: optuna.Trial) -> tuple[float, float, float]:
        p: dict = {}
        p["prune.method"] = trial.suggest_categorical(
            "prune.method", ["none", "magnitude", "global", "structured"])
        if p["prune.method"] == "magnitude":
            p["prune.threshold"] = trial.suggest_float("prune.threshold", 0.001, 0.2, log=True)
        if p["prune.method"] == "global":
            p["prune.amount"] = trial.suggest_float("prune.amount", 0.3, 0.99)
        if p["prune.method"] == "structured":
            p["prune.structured_ratio"] = trial.suggest_float("prune.structured_ratio", 0.1, 0.7)
        p["quant.method"] = trial.suggest_categorical(
            "quant.method", ["none", "int8_dynamic", "lowbit"])
        if p["quant.method"] == "lowbit":
            p["quant.bits"] = trial.suggest_int("quant.bits", 2, 8)
            p["quant.group_size"] = trial.suggest_categorical("quant.group_size", [0, 16, 64])
        p["train.lr"] = trial.suggest_float("train.lr", 1e-4, 1e-2, log=True)
        p["train.epochs"] = trial.suggest_int("train.epochs", 0, 4)
        for g in GROUPS:  # per layer group: its own quantizer or the global one
            name = f"quant.method[{g}]"
            p[name] = trial.suggest_categorical(name, ["inherit", "none", "int8_dynamic",
                                                       "lowbit"])
        for g in GROUPS:
            if p[f"quant.method[{g}]"] == "lowbit":
                p[f"quant.bits[{g}]"] = trial.suggest_int(f"quant.bits[{g}]", 2, 8)
        if p["prune.method"] == "global":
            for g in GROUPS:
                p[f"prune.amount[{g}]"] = trial.suggest_float(f"prune.amount[{g}]", 0.3, 0.99)
        p["train.kd_alpha"] = trial.suggest_float("train.kd_alpha", 0.0, 1.0)
        p["train.kd_temperature"] = trial.suggest_float("train.kd_temperature", 1.0, 8.0)
        p["serve.batch_size"] = trial.suggest_categorical("serve.batch_size", [1, 4, 16, 64])
        p["serve.threads"] = trial.suggest_int("serve.threads", 1, 2)
        p["serve.cache_ratio"] = trial.suggest_float("serve.cache_ratio", 0.0, 0.6)
        p["serve.memory_ratio"] = trial.suggest_float("serve.memory_ratio", 0.02, 0.4)
        if replay is not None:
            p = replay[trial.number]
        ev = evaluate(workload, Config.from_flat(p), budget_mb=1.0, seed=trial.number)
        trial.set_user_attr("metrics", ev.metrics)
        trial.set_user_attr("memory_margin_mb", ev.memory_margin_mb)
        m = ev.metrics
        return m["accuracy"], m["latency_ms"], m["size_mb"]

    study = optuna.create_study(study_name="plain", storage=url, sampler=sampler,
                                directions=["maximize", "minimize", "minimize"])
    for params in enqueue:
        study.enqueue_trial(params)
    study.optimize(objective, n_trials=trials)


def hv_at(url: str, name: str, t_start: float, t_cut: float) -> tuple[float, int]:
    """Hypervolume of feasible trials completed within t_cut s of the process start."""
    import optuna
    from optuna._hypervolume import compute_hypervolume

    st = optuna.load_study(study_name=name, storage=url)
    pts, n = [], 0
    for t in st.trials:
        if t.state.name != "COMPLETE" or t.datetime_complete.timestamp() - t_start > t_cut:
            continue
        n += 1
        m = t.user_attrs["metrics"]
        margin = t.user_attrs.get("memory_margin_mb")
        if margin is None:
            margin = max(t.constraints.values()) if t.constraints else 0.0
        if margin > 0:
            continue
        p = np.array([1 - m["accuracy"], m["latency_ms"], m["size_mb"]]) / REF
        if np.all(p < 1):
            pts.append(p)
    hv = float(compute_hypervolume(np.array(pts), np.ones(3))) if pts else 0.0
    return hv, n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--plain-only", metavar="URL")
    ap.add_argument("--sampler", default="same", choices=["same", "default"])
    ap.add_argument("--enqueue", metavar="JSON", help="configs to queue first (plain side)")
    ap.add_argument("--replay", metavar="JSON",
                    help="configs to evaluate, trial k the k-th (plain side, see plain_study)")
    ap.add_argument("--src", metavar="DIR",
                    help="csearch source tree all sides run (default: this checkout)")
    a = ap.parse_args()
    global ROOT
    ROOT = os.path.abspath(a.src) if a.src else ROOT
    if a.plain_only:
        sys.path.insert(0, ROOT)
        enqueue = json.loads(open(a.enqueue).read()) if a.enqueue else []
        replay = json.loads(open(a.replay).read()) if a.replay else None
        plain_study(a.plain_only, a.trials, a.sampler, enqueue, replay)
        return
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _common import CLI, env, machine

    trials = 8 if a.quick else a.trials
    print(f"machine: {machine()}; {trials} trials per side; csearch from {ROOT}; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        sides = {
            "csearch": ([*CLI, "run", "--storage", f"sqlite:///{tmp}/c.db", "--study", "c",
                         "--trials", str(trials), "--seed", "0", "--device", "cpu", "--quiet"],
                        f"sqlite:///{tmp}/c.db", "c"),
            "plain-same": ([sys.executable, __file__, "--plain-only", f"sqlite:///{tmp}/p.db",
                            "--trials", str(trials), "--sampler", "same",
                            "--enqueue", f"{tmp}/queued.json"],
                           f"sqlite:///{tmp}/p.db", "plain"),
            "plain-default": ([sys.executable, __file__, "--plain-only",
                               f"sqlite:///{tmp}/d.db", "--trials", str(trials),
                               "--sampler", "default"], f"sqlite:///{tmp}/d.db", "plain"),
            "plain-replay": ([sys.executable, __file__, "--plain-only", f"sqlite:///{tmp}/r.db",
                              "--trials", str(trials), "--sampler", "same",
                              "--replay", f"{tmp}/configs.json"], f"sqlite:///{tmp}/r.db",
                             "plain"),
        }
        for name, (cmd, url, study) in sides.items():
            t0 = time.time()
            r = subprocess.run(cmd, env=env(PYTHONPATH=ROOT), cwd=tmp, capture_output=True,
                               text=True)
            wall = time.time() - t0
            if r.returncode:
                raise SystemExit(f"{name} failed: {r.stderr[-2000:]}")
            res[name] = (t0, wall, url, study)
            if name == "csearch":  # what it queued, for plain-same to queue as well
                import optuna

                done = optuna.load_study(study_name=study, storage=url).trials
                queued = [t.params for t in done if t.user_attrs.get("seeded")]
                with open(f"{tmp}/queued.json", "w") as f:
                    json.dump(queued, f)
                with open(f"{tmp}/configs.json", "w") as f:  # every config, for plain-replay
                    json.dump([t.params for t in done], f)
            print(f"{name:14s} wall {wall:6.1f}s  {trials / wall * 60:5.2f} trials/min", flush=True)
        t_cut = min(w for k, (_, w, _, _) in res.items() if k != "plain-replay")
        print(f"hypervolume at equal wall time T = {t_cut:.1f}s (ref {REF.tolist()}, "
              "minimisation form 1-acc, latency_ms, size_mb):")
        for name, (t0, wall, url, study) in res.items():
            hv, n = hv_at(url, study, t0, t_cut)
            if name == "plain-replay":  # its stored params are not what it evaluated
                hv, n = float("nan"), 0
            import optuna

            st = optuna.load_study(study_name=study, storage=url)
            seq = [(t.params.get("prune.method"), t.params.get("quant.method"),
                    t.params.get("train.epochs")) for t in st.trials]
            first = min(t.datetime_start.timestamp() for t in st.trials) - t0
            in_trials = sum((t.datetime_complete - t.datetime_start).total_seconds()
                            for t in st.trials if t.datetime_complete)
            evals = sum(t.user_attrs.get("metrics", {}).get("eval_seconds", 0.0)
                        for t in st.trials)
            done = [t for t in st.trials if t.datetime_complete]
            print(f"  {name:14s} start-up to first trial {first:.1f}s, inside trials "
                  f"{in_trials:.1f}s of which evaluate {evals:.1f}s "
                  f"({(in_trials - evals) / max(len(done), 1) * 1e3:.0f} ms per trial outside "
                  f"evaluate), after the last trial {wall - first - in_trials:.1f}s")
            print(f"  {name:14s} {n:3d} trials done by T, hypervolume {hv:.4f}; "
                  f"final {hv_at(url, study, t0, 1e9)[0]:.4f}; configs {seq}")
        c = res["csearch"][1]
        for name in ("plain-same", "plain-default", "plain-replay"):
            print(f"csearch trials/min / {name} trials/min = {res[name][1] / c:.3f} "
                  "(>= 1: csearch not slower)")
        print("plain-same and plain-default search on their own, so their evaluations differ "
              "from csearch's; plain-replay evaluates csearch's configs in csearch's order "
              "(same work, its own sampling and bookkeeping): the like-for-like speed ratio")


if __name__ == "__main__":
    main()
