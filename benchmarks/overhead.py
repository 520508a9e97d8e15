"""Overhead of csearch around the evaluation, on digits, measured in one run.

    python benchmarks/overhead.py              # 20-trial `csearch run`, then a profiled one
    python benchmarks/overhead.py --quick      # 8 trials, 5 profiled
    python benchmarks/overhead.py --no-profile
    python benchmarks/overhead.py --bookkeeping-only   # part 2 only, ~1 minute

1. A real `csearch run --workload digits-cnn --space joint --trials N` (SQLite in a
   temporary directory, artifacts on) as a subprocess; the clock is the subprocess's wall
   time. From the stored study:
   - per-trial overhead = (datetime_complete - datetime_start) - metrics.eval_seconds,
     i.e. everything in a trial that is not `objectives.evaluate` (sampling, user attrs,
     constraints, artifact upload, storage writes), as a fraction of the trial's wall time:
     median over trials, and in aggregate (sum over sum). Goal <= 5%.
   - share of the command inside trials = sum of trial wall times / command wall time.
     Goal >= 90%.
2. csearch's bookkeeping alone: `search.runner.run_trials` on a SQLite study with the
   evaluation replaced by a stub that returns a precomputed real Evaluation (so each
   "trial" is sampling + user attrs + constraints + artifact upload + storage), 12 trials
   per storage mode, modes interleaved twice: SQLite as csearch opens it (WAL,
   synchronous=NORMAL) against the rollback journal with synchronous=FULL (SQLite's
   default, what csearch used before). Reported in ms per trial and as a fraction of
   the median digits eval_seconds measured in part 1.
3. The same command under pyinstrument (`python -m pyinstrument -r json`), with the time
   split into: imports, workload build, baseline evaluation, trial evaluations, sampler,
   storage (Optuna storage calls outside the sampler), artifact upload, Pareto printout
   and the rest. Each sample is counted once, in the outermost category on its stack.

Trials on digits take ~1-60 s here (recovery fine-tuning dominates, and the 2 cores are
shared), so the absolute overhead in seconds is printed too: a short trial makes the
same overhead a larger fraction.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import optuna

from _common import CLI, env, machine, now

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def study_stats(url: str, name: str) -> tuple[list[float], list[float]]:
    walls, evals, _, _ = trial_times(url, name)
    return walls, evals


def trial_times(url: str, name: str) -> tuple[list[float], list[float], float, float]:
    """Wall and eval seconds of each finished trial with metrics, and the epoch times of
    the first trial's start and the last trial's end."""
    st = optuna.load_study(study_name=name, storage=url)
    walls, evals = [], []
    for t in st.trials:
        e = t.user_attrs.get("metrics", {}).get("eval_seconds")
        if t.state.is_finished() and e is not None and t.datetime_complete is not None:
            walls.append((t.datetime_complete - t.datetime_start).total_seconds())
            evals.append(float(e))
    first = min(t.datetime_start.timestamp() for t in st.trials if t.datetime_start)
    last = max(t.datetime_complete.timestamp() for t in st.trials if t.datetime_complete)
    return walls, evals, first, last


def measure(trials: int, tmp: str) -> float:
    url = f"sqlite:///{tmp}/o.db"
    args = ["run", "--workload", "digits-cnn", "--space", "joint", "--storage", url,
            "--study", "o", "--trials", str(trials), "--seed", "0", "--device", "cpu",
            "--quiet"]
    t0, epoch0 = now(), time.time()
    r = subprocess.run([*CLI, *args], env=env(PYTHONPATH=ROOT), cwd=tmp,
                       capture_output=True, text=True)
    wall = now() - t0
    if r.returncode:
        raise SystemExit(f"csearch run failed: {r.stderr}")
    walls, evals, first, last = trial_times(url, "o")
    over = [w - e for w, e in zip(walls, evals)]
    frac = [o / w for o, w in zip(over, walls)]
    print(f"command: csearch {' '.join(args)}")
    print(f"  command wall {wall:.1f}s, {len(walls)} trials, trial wall total {sum(walls):.1f}s, "
          f"eval total {sum(evals):.1f}s")
    print(f"  per-trial overhead: median {statistics.median(over) * 1e3:.0f} ms "
          f"(min {min(over) * 1e3:.0f}, max {max(over) * 1e3:.0f}); "
          f"fraction median {statistics.median(frac):.1%}, aggregate "
          f"{sum(over) / sum(walls):.1%} (goal <= 5%)")
    print(f"  trial eval_seconds: median {statistics.median(evals):.2f}s "
          f"(min {min(evals):.2f}, max {max(evals):.2f})")
    print(f"  share of the command inside trials: {sum(walls) / wall:.1%} (goal >= 90%); "
          f"outside trials {wall - sum(walls):.1f}s: start-up to the first trial "
          f"{first - epoch0:.1f}s, after the last trial {epoch0 + wall - last:.1f}s")
    return statistics.median(evals)


# (category, function name, path fragment); the first match on a stack, outermost, wins.
CATEGORIES = [
    ("workload build", "load_context", "search/study.py"),
    ("baseline evaluation", "create_or_resume", "search/study.py"),
    ("artifact upload", "_upload", "search/runner.py"),
    ("trial evaluations", "evaluate", "objectives/pipeline.py"),
    ("sampler", "sample_relative", "optuna/samplers"),
    ("sampler", "sample_independent", "optuna/samplers"),
    ("sampler", "infer_relative_search_space", "optuna/samplers"),
    ("sampler", "before_trial", "optuna/samplers"),
    ("sampler", "after_trial", "optuna/samplers"),
    ("sampler", "", "search/_optuna/tpe.py"),  # csearch's windowed TPE
    ("storage", "", "optuna/storages"),
    ("Pareto printout", "pareto_rows", "search/results.py"),
    ("imports", "_find_and_load", "<frozen importlib._bootstrap>"),
]


def categorize(frame: dict, acc: dict[str, float]) -> None:
    fn, path = frame.get("function", ""), frame.get("file_path", "") or ""
    for cat, name, frag in CATEGORIES:
        if frag in path and (not name or fn == name):
            acc[cat] = acc.get(cat, 0.0) + frame["time"]
            return
    for c in frame.get("children", []):
        categorize(c, acc)


def profile(trials: int, tmp: str) -> None:
    url = f"sqlite:///{tmp}/p.db"
    out = os.path.join(tmp, "profile.json")
    args = ["run", "--workload", "digits-cnn", "--space", "joint", "--storage", url,
            "--study", "p", "--trials", str(trials), "--seed", "1", "--device", "cpu",
            "--quiet"]
    t0 = now()
    r = subprocess.run([sys.executable, "-m", "pyinstrument", "-r", "json", "-o", out,
                        "-m", "search.cli", *args], env=env(PYTHONPATH=ROOT), cwd=tmp,
                       capture_output=True, text=True)
    wall = now() - t0
    if r.returncode:
        raise SystemExit(f"profiled run failed: {r.stderr[-2000:]}")
    data = json.load(open(out))
    root = data["root_frame"]
    total = root["time"]
    acc: dict[str, float] = {}
    categorize(root, acc)
    acc["rest (interpreter, click, other)"] = total - sum(acc.values())
    walls, _ = study_stats(url, "p")
    print(f"profiled: csearch {' '.join(args)} (wall {wall:.1f}s, profiled {total:.1f}s, "
          f"{len(walls)} trials)")
    for cat, t in sorted(acc.items(), key=lambda kv: -kv[1]):
        per_trial = t / max(len(walls), 1) * 1e3
        print(f"  {cat:34s} {t:7.2f}s {t / total:6.1%}  ({per_trial:.0f} ms/trial)")


def bookkeeping(tmp: str, trials: int = 30) -> dict[str, list[float]]:
    """Seconds per stub trial for each SQLite mode; with csearch's mode also the SQL
    statements and commits per trial (under "statements", "commits"), which load does not
    change. 30 trials: TPE samples the last 20 (its first 10 are random)."""
    sys.path.insert(0, ROOT)
    import sqlalchemy

    from search import runner
    from search.spec import DEFAULT_OBJECTIVES
    from search.storage import open_storage
    from search.storage.backends import _sqlite_pragmas
    from search.study import build_spec, create_or_resume, load_context
    from spaces import Config, TrainConfig

    def rollback(conn: object, _rec: object) -> None:
        cur = conn.cursor()
        cur.execute("PRAGMA journal_mode=DELETE")
        cur.execute("PRAGMA synchronous=FULL")
        cur.close()

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out: dict[str, list[float]] = {"wal (csearch)": [], "rollback journal, FULL": []}
    ctx = None
    real = runner.evaluate
    try:
        for rnd in range(2):
            for mode in ("wal (csearch)", "rollback journal, FULL"):
                d = os.path.join(tmp, f"stub-{rnd}-{len(out[mode])}-{mode[:3]}")
                os.makedirs(d)
                spec = build_spec(workload="digits-cnn", space="joint",
                                  objectives=DEFAULT_OBJECTIVES, constraints=(), sampler="tpe",
                                  seed=rnd, device="cpu", trials=trials, timeout=None,
                                  memory_budget_mb=None, artifacts=os.path.join(d, "art"))
                if ctx is None:
                    ctx = load_context(spec)
                    ev = real(ctx.workload, Config(train=TrainConfig(epochs=0)), budget_mb=1.0)
                    runner.evaluate = lambda *a, ev=ev, **k: ev
                ctx.spec = spec
                stg = open_storage(f"sqlite:///{d}/s.db", create=True)
                if mode.startswith("rollback"):
                    # csearch's WAL listener off: each new connection (the heartbeat
                    # thread's) would flip the journal mode back and hit a locked file.
                    sqlalchemy.event.remove(stg.engine, "connect", _sqlite_pragmas)
                    sqlalchemy.event.listen(stg.engine, "connect", rollback)
                    stg.engine.dispose()
                st, _ = create_or_resume(stg, "s", spec, ctx)
                sql = {"statements": 0, "commits": 0}

                def count(key: str, *_: object) -> None:
                    sql[key] += 1  # noqa: B023 - listener removed within this iteration

                sqlalchemy.event.listen(stg.engine, "before_cursor_execute",
                                        lambda *a: count("statements"))
                sqlalchemy.event.listen(stg.engine, "commit", lambda *a: count("commits"))
                t0 = now()
                n = runner.run_trials(st, ctx)
                out[mode].append((now() - t0) / n)
                if mode.startswith("wal"):
                    for key, value in sql.items():
                        out.setdefault(key, []).append(value / n)
                stg.engine.dispose()
    finally:
        runner.evaluate = real
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--profile-trials", type=int, default=10)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--bookkeeping-only", action="store_true",
                    help="only part 2 (no real trials; fractions then print as nan)")
    ap.add_argument("--src", metavar="DIR",
                    help="csearch source tree to measure (default: this checkout), e.g. an "
                         "export of another branch, to compare two versions under one load")
    a = ap.parse_args()
    global ROOT
    ROOT = os.path.abspath(a.src) if a.src else ROOT
    if a.quick:
        a.trials, a.profile_trials = 8, 5
    print(f"machine: {machine()}, optuna {optuna.__version__}, csearch from {ROOT}, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        med_eval = float("nan") if a.bookkeeping_only else measure(a.trials, tmp)
        b = bookkeeping(tmp)
        wal, old = statistics.mean(b["wal (csearch)"]), statistics.mean(b["rollback journal, FULL"])
        print("bookkeeping per trial with a stub evaluation (sampler + attrs + constraints + "
              "artifact + storage), 2 interleaved rounds of 30 trials:")
        for mode in ("wal (csearch)", "rollback journal, FULL"):
            v = b[mode]
            print(f"  {mode:24s} {' / '.join(f'{x * 1e3:.0f}' for x in v)} ms per trial; "
                  f"mean {statistics.mean(v) / med_eval:.2%} of the median digits eval")
        print(f"  csearch's mode: {statistics.mean(b['statements']):.1f} SQL statements and "
              f"{statistics.mean(b['commits']):.1f} commits per trial")
        print(f"  rollback / wal = {old / wal:.2f}x")
        if not (a.no_profile or a.bookkeeping_only):
            profile(a.profile_trials, tmp)


if __name__ == "__main__":
    main()
