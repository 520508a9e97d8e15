"""Scale: `csearch pareto` and `csearch report` on a 10,000-trial study, per-trial storage
and sampler overhead at 1,000 / 5,000 / 10,000 trials, and resident memory per worker per
10,000 trials; all in one run.

    python benchmarks/scale.py            # 10,000 trials, checkpoints 1k/5k/10k
    python benchmarks/scale.py --quick    # 2,000 trials, checkpoints 500/1k/2k
    python benchmarks/scale.py --baseline-tree ../main   # also time main's pareto/report
    python benchmarks/scale.py --db /tmp/s10k.db --fill-only   # keep a study to profile
    python benchmarks/scale.py --db /tmp/s10k.db --baseline-tree ../main  # reread it

How:
- The study is created by `csearch create` (digits, joint space, constraint
  accuracy_drop<=0.01, so it has a real spec and baseline) in a SQLite file, then filled
  through ask/tell on an in-memory study: parameters are sampled by csearch's
  `Space.sample` with a RandomSampler, metrics are synthetic but shaped like digits
  results (accuracy falls with sparsity and few bits, size follows sparsity and bits,
  latency with batch and cache), and each trial stores what `TrialObjective` stores
  (eval_seed/worker/metrics user attrs, one `set_constraint` per constraint plus the
  memory budget, the legacy `constraints` list); ~2 % are pruned and ~0.5 % failed, with
  their reasons. The finished trials are copied into the SQLite study in one transaction
  with Optuna's ORM models (`_common.bulk_add_trials`, ~2 ms per trial against 30-130 ms
  for `add_trials`), and the first copy is read back and compared field by field.
- Storage overhead per trial at N: on the SQLite study holding N trials, the bookkeeping
  csearch does per trial (ask, eval_seed/worker/metrics user attrs, constraints, legacy
  constraints attr, tell) with a RandomSampler, median of 20.
- The space is the digits `joint` space as a digits study searches it (`resolve_space`:
  templates expanded to the model's layer groups, 27 conditional parameters).
- Sampler overhead at N, side by side: the default sampler (`search.samplers.make_sampler
  ("tpe")`: `WindowedTPESampler`, multivariate grouped TPE with constant liar on the
  100 best feasible trials + the 300 most recent trials) and Optuna's own TPESampler with the same
  settings (csearch's default before the window), each suggesting one full config (ask +
  `Space.sample`) on an in-memory study holding N trials and on the SQLite study (storage
  cache warm, as in a running worker). A worker makes its sampler once, so the figure is
  the median of the suggests after the first, each trial then told COMPLETE with
  synthetic metrics as a worker would; the first suggest of a fresh sampler (a worker's
  first trial; the window's one pass over the history) is printed too.
- A digits trial's time is measured in the same run (6 real evaluations of random
  configs, median; each is printed) so the sampler's share of a trial is a same-run
  ratio. Goal: < 5% at 1,000 trials.
- `csearch pareto --format json` (goal <= 5 s) and `csearch report` (goal <= 30 s) on the
  full study, each a fresh subprocess (cold start included), `--repeat` times, median;
  with `--baseline-tree` the same commands of another checkout alternate with this one's
  and their outputs are compared.
- Memory: VmRSS of a fresh process before and after loading the 10k study and asking the
  default sampler for one trial.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import warnings

import optuna
from optuna.trial import TrialState

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import CLI, bulk_add_trials, check_same_trials, env, machine, now  # noqa: E402

from search.runner import LEGACY_CONSTRAINTS_ATTR, MEMORY_CONSTRAINT  # noqa: E402
from search.samplers import TPE_BEST, TPE_WINDOW, make_sampler  # noqa: E402
from search.spec import StudySpec, stored_spec  # noqa: E402
from search.storage import open_storage, redact  # noqa: E402
from search.study import resolve_space  # noqa: E402
from spaces import Space, load_space  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
warnings.filterwarnings("ignore")
optuna.logging.set_verbosity(optuna.logging.WARNING)


def fake_metrics(p: dict, rng: random.Random) -> tuple[dict, float]:
    """Metrics shaped like digits results, and the memory-budget margin (<= 0 fits)."""
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
         "size_mb": size, "sparsity": sparsity, "effective_bits": bits * (1 - sparsity) + 1.0,
         "rejected_early": 0.0, "eval_seconds": 2 + rng.random() * 10}
    return m, memory - 1.0


def record(study: optuna.Study, space: object, spec: StudySpec, rng: random.Random,
           complete: bool = False) -> None:
    """One trial with what `TrialObjective` stores: eval_seed and worker user attrs; then
    either metrics, one constraint per spec constraint plus the memory budget and the
    legacy `constraints` list (COMPLETE), or a pruned/failed trial's reason (as digits
    studies have a few: about 2 % pruned by the accuracy guard, 0.5 % failed)."""
    t = study.ask()
    space.sample(t)
    finish(study, t, spec, rng, complete)


def finish(study: optuna.Study, t: optuna.Trial, spec: StudySpec, rng: random.Random,
           complete: bool = False) -> None:
    """`record` once the trial's parameters are sampled."""
    m, margin = fake_metrics(t.params, rng)
    t.set_user_attr("eval_seed", spec.seed + t.number)
    t.set_user_attr("worker", "bench:0")
    fate = 1.0 if complete else rng.random()
    if fate < 0.02:
        t.set_user_attr("pruned_reason", "accuracy 0.41 after epoch 1, far below the guard")
        t.set_user_attr("partial_metrics", {"accuracy": 0.41, "epoch": 1.0})
        study.tell(t, state=TrialState.PRUNED)
        return
    if fate < 0.025:
        t.set_user_attr("fail_reason", "RuntimeError: synthetic failure")
        study.tell(t, state=TrialState.FAIL)
        return
    constraints = {str(c): c.value(m) for c in spec.parsed_constraints()}
    constraints[MEMORY_CONSTRAINT] = margin
    t.set_user_attr("metrics", m)
    for name, value in constraints.items():
        t.set_constraint(name, value)
    t.storage.set_trial_system_attr(t._trial_id, LEGACY_CONSTRAINTS_ATTR,
                                    list(constraints.values()))
    study.tell(t, [m[k] for k in spec.metric_names])


def fill(mem: optuna.Study, space: object, spec: StudySpec, n: int, seed: int) -> None:
    rng = random.Random(seed)
    mem.sampler = optuna.samplers.RandomSampler(seed=seed)
    for _ in range(n):
        record(mem, space, spec, rng)


def bookkeeping(study: optuna.Study, space: object, spec: StudySpec, reps: int) -> float:
    """Median seconds of one trial's csearch storage writes (random sampler)."""
    rng = random.Random(1)
    study.sampler = optuna.samplers.RandomSampler(seed=1)
    times = []
    for _ in range(reps):
        t0 = now()
        record(study, space, spec, rng, complete=True)
        times.append(now() - t0)
    return statistics.median(times)


def optuna_tpe(seed: int) -> optuna.samplers.BaseSampler:
    """Optuna's TPESampler with csearch's settings: the default before the window."""
    return optuna.samplers.TPESampler(multivariate=True, group=True, constant_liar=True,
                                      seed=seed)


SAMPLERS = {"default": lambda seed, space: make_sampler("tpe", seed, space),
            "optuna": lambda seed, space: optuna_tpe(seed)}


def sampler_times(study: optuna.Study, space: Space, spec: StudySpec, which: str,
                  reps: int) -> tuple[float, float]:
    """Seconds for one sampler (`which` in SAMPLERS) to suggest a full config: its first
    suggest, and the median of the next `reps`. Each suggested trial is then recorded
    COMPLETE with synthetic metrics, as a worker would, so each suggest sees a new
    history."""
    study.sampler = SAMPLERS[which](100, space)
    rng = random.Random(2)
    times = []
    for _ in range(reps + 1):
        t0 = now()
        t = study.ask()
        space.sample(t)
        times.append(now() - t0)
        finish(study, t, spec, rng, complete=True)
    return times[0], statistics.median(times[1:])


def digits_trial_seconds(w: object, space: Space, n: int) -> list[float]:
    """Seconds of `n` real digits evaluations of random joint configs (they range from
    about 0.2 s to a few seconds, with the number of fine-tune epochs and the load)."""
    from objectives import evaluate

    st = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=7))
    times = []
    for _ in range(n):
        t = st.ask()
        cfg = space.sample(t)
        t0 = now()
        evaluate(w, cfg, budget_mb=1.0, seed=t.number)
        times.append(now() - t0)
        st.tell(t, 0.0)
    return times


def rss_child(url: str, name: str, space_file: str) -> str:
    code = (
        "import re,sys,warnings;warnings.filterwarnings('ignore');"
        "sys.path.insert(0,sys.argv[3]);"
        "rss=lambda:int(re.search(r'VmRSS:\\s+(\\d+)',open('/proc/self/status').read())[1])/1024;"
        "import optuna,torch;optuna.logging.set_verbosity(optuna.logging.WARNING);"
        "from search.samplers import make_sampler;from search.storage import open_storage;"
        "from spaces import parse_space;sp=parse_space(open(sys.argv[4]).read());a=rss();"
        "st=optuna.load_study(study_name=sys.argv[2],storage=open_storage(sys.argv[1],heartbeat=False));"
        "ts=st.get_trials(deepcopy=False);st.sampler=make_sampler('tpe',0,sp);t=st.ask();sp.sample(t);"
        "b=rss();print(f'{len(ts)} trials: RSS {a:.0f} MB before loading, {b:.0f} MB after '"
        "f'loading + one TPE suggest: +{b-a:.0f} MB '"
        "f'({(b-a)/len(ts)*1e4:.0f} MB per 10,000 trials)')"
    )
    r = subprocess.run([sys.executable, "-c", code, url, name, ROOT, space_file],
                       capture_output=True, text=True, env=env())
    return (r.stdout or r.stderr).strip()


def timed_cli(tree: str, cwd: str, *args: str) -> tuple[float, subprocess.CompletedProcess]:
    """Seconds for one `csearch` command run end to end (cold start) with `tree` first on
    the path, and its result."""
    t0 = now()
    r = subprocess.run([*CLI, *args], env=env(PYTHONPATH=tree), cwd=cwd, capture_output=True,
                       text=True)
    return now() - t0, r


def _page(path: str) -> str:
    """A report page without what differs between two runs (generation time, timings)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    text = re.sub(r"generated \d{4}-\d\d-\d\d \d\d:\d\d", "generated -", text)
    return re.sub(r'(id="csearch-timings">)[^<]*', r"\1", text)


def read_commands(url: str, name: str, tmp: str, trees: dict[str, str], repeat: int) -> None:
    """`csearch pareto --format json` and `csearch report` on the study, `repeat` times per
    tree (this one, and a baseline checkout when given; alternating, so load drifts hit
    both alike), checking that every tree prints the same front and the same report."""
    from search.storage import read_trials

    total = len(read_trials(optuna.load_study(study_name=name, storage=open_storage(
        url, heartbeat=False))))
    times: dict[tuple[str, str], list[float]] = {}
    outputs: dict[tuple[str, str], set[str]] = {}
    for _ in range(repeat):
        for i, (label, tree) in enumerate(trees.items()):
            t_p, r = timed_cli(tree, tmp, "pareto", "--storage", url, "--study", name,
                               "--format", "json")
            if r.returncode:
                raise SystemExit(f"[{label}] pareto failed: {r.stderr.strip()[-500:]}")
            times.setdefault((label, "pareto"), []).append(t_p)
            outputs.setdefault(("pareto", label), set()).add(r.stdout)
            out = f"{tmp}/report-{i}.html"
            t_r, r = timed_cli(tree, tmp, "report", "--storage", url, "--study", name,
                               "-o", out)
            if r.returncode:
                raise SystemExit(f"[{label}] report failed: {r.stderr.strip()[-500:]}")
            times.setdefault((label, "report"), []).append(t_r)
            outputs.setdefault(("report", label), set()).add(_page(out))
    for (label, cmd), ts in times.items():
        goal = 5 if cmd == "pareto" else 30
        print(f"[{label}] csearch {cmd} on {total} trials: median {statistics.median(ts):.2f}s "
              f"of {len(ts)} ({', '.join(f'{t:.2f}' for t in ts)}; goal <= {goal} s)")
    rows = len(json.loads(next(iter(outputs[("pareto", "this tree")]))))
    print(f"pareto front: {rows} trials")
    if len(trees) > 1:
        for cmd in ("pareto", "report"):
            seen = set().union(*(v for (c, _), v in outputs.items() if c == cmd))
            print(f"{cmd} output identical across trees and runs: {len(seen) == 1}")
        for cmd in ("pareto", "report"):
            base = [statistics.median(ts) for (lab, c), ts in times.items()
                    if c == cmd and lab != "this tree"][0]
            print(f"{cmd}: this tree {base / statistics.median(times[('this tree', cmd)]):.1f}x "
                  "faster than the baseline tree (medians, same run)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=10000)
    ap.add_argument("--checkpoints", default="1000,5000,10000")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--digits-trials", type=int, default=6)
    ap.add_argument("--db", default=None,
                    help="keep the study in this SQLite file (default: a temporary one)")
    ap.add_argument("--storage", default=None, metavar="URL",
                    help="the study's storage instead of SQLite, e.g. postgresql://...")
    ap.add_argument("--study", default="scale")
    ap.add_argument("--fill-only", action="store_true",
                    help="only create and fill the study (with --db or --storage, to keep "
                         "it); a later run that finds the study only times the reads")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs of each read command per tree (median reported)")
    ap.add_argument("--baseline-tree", default=None, metavar="DIR",
                    help="also time pareto/report with this checkout first on the path "
                         "(e.g. the main branch), on the same study in the same run")
    a = ap.parse_args()
    if a.quick:
        a.trials, a.checkpoints = 2000, "500,1000,2000"
    checkpoints = [int(c) for c in a.checkpoints.split(",")]
    print(f"machine: {machine()}, optuna {optuna.__version__}; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    trees = {"this tree": ROOT}
    if a.baseline_tree:
        trees["baseline " + a.baseline_tree] = os.path.abspath(a.baseline_tree)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.abspath(a.db) if a.db else f"{tmp}/scale.db"
        url, name = a.storage or f"sqlite:///{path}", a.study
        if (a.storage or os.path.exists(path)) and name in {
                s.study_name for s in open_storage(url, create=True).get_all_studies()}:
            print(f"reusing study {name!r} in {redact(url)}; only the read commands are timed")
            read_commands(url, name, tmp, trees, a.repeat)
            return
        space_file = build_and_measure(a, checkpoints, url, name, tmp)
        if not a.fill_only:
            read_commands(url, name, tmp, trees, a.repeat)
            print("memory per worker:", rss_child(url, name, space_file))
    print(f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def build_and_measure(a: argparse.Namespace, checkpoints: list[int], url: str, name: str,
                      tmp: str) -> str:
    """Create the study, fill it checkpoint by checkpoint, and at each checkpoint time the
    samplers and the storage bookkeeping (unless --fill-only). Returns the path of the
    space's TOML (as the study searched it)."""
    from objectives import load_workload

    r = subprocess.run([*CLI, "create", "--workload", "digits-cnn", "--space", "joint",
                        "--storage", url, "--study", name, "--trials",
                        str(a.trials * 2), "--artifacts", "none", "--device", "cpu",
                        "--constraint", "accuracy_drop<=0.01"],
                       env=env(PYTHONPATH=ROOT), cwd=tmp, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr)
    workload = load_workload("digits-cnn")
    space = resolve_space(load_space("joint"), workload)
    space_file = f"{tmp}/space.toml"
    with open(space_file, "w", encoding="utf-8") as f:
        f.write(space.source)
    print(f"space: digits `joint` resolved for digits-cnn, {len(space.params)} parameters")
    storage = open_storage(url, heartbeat=False)
    disk = optuna.load_study(study_name=name, storage=storage)
    spec = stored_spec(disk)
    mem = optuna.create_study(directions=disk.directions)
    digits = 0.0
    if not a.fill_only:
        each = digits_trial_seconds(workload, space, a.digits_trials)
        digits = statistics.median(each)
        print(f"digits trial (median of {a.digits_trials} random joint configs): {digits:.2f}s "
              f"({', '.join(f'{t:.2f}' for t in each)})")
    copied = 0  # trials of `mem` already copied to the stored study
    table: list[tuple[int, dict[str, tuple[float, float, float, float]], float]] = []
    for n in checkpoints:
        t0 = now()
        fill(mem, space, spec, max(0, n - len(mem.get_trials(deepcopy=False))), seed=n)
        t_fill = now() - t0
        new = mem.get_trials(deepcopy=False)[copied:]
        t0 = now()
        bulk_add_trials(disk, new)
        t_add = now() - t0
        if copied == 0:  # the copy reads back exactly as written
            check_same_trials(new, disk.get_trials(deepcopy=False))
        copied += len(new)
        print(f"N={n}: filled +{len(new)} via ask/tell in memory {t_fill:.1f}s, "
              f"copied to the study's storage {t_add:.1f}s")
        if a.fill_only:
            continue
        got: dict[str, tuple[float, float, float, float]] = {}
        for which in SAMPLERS:
            first_mem, s_mem = sampler_times(mem, space, spec, which, 5)
            disk.get_trials(deepcopy=False)  # a running worker's storage cache is warm
            first_disk, s_disk = sampler_times(disk, space, spec, which, 5)
            got[which] = (s_mem, s_disk, first_mem, first_disk)
            label = (f"default (window {TPE_WINDOW}, best {TPE_BEST})" if which == "default"
                     else "Optuna's TPESampler")
            print(f"  {label} suggest: {s_mem * 1e3:.0f} ms in memory = {s_mem / digits:.1%}, "
                  f"{s_disk * 1e3:.0f} ms on SQLite = {s_disk / digits:.1%} of a digits "
                  f"trial; a fresh sampler's first: {first_mem * 1e3:.0f} / "
                  f"{first_disk * 1e3:.0f} ms", flush=True)
        book = bookkeeping(disk, space, spec, 20)
        print(f"  storage bookkeeping per trial {book * 1e3:.0f} ms = {book / digits:.1%}; "
              f"Optuna's TPE / default: {got['optuna'][0] / got['default'][0]:.1f}x in memory, "
              f"{got['optuna'][1] / got['default'][1]:.1f}x on SQLite", flush=True)
        table.append((n, got, book))
    if not a.fill_only:
        print(f"\nsampler per trial (median of 5 after the first suggest; digits trial "
              f"{digits:.2f} s):")
        print("| N trials | default, in memory | default, SQLite | Optuna's TPE, in memory "
              "| Optuna's TPE, SQLite | default's first suggest (memory / SQLite) "
              "| storage bookkeeping |")
        print("|---|---|---|---|---|---|---|")
        for n, got, book in table:
            d, o = got["default"], got["optuna"]
            print(f"| {n:,} | {d[0] * 1e3:.0f} ms ({d[0] / digits:.1%}) "
                  f"| {d[1] * 1e3:.0f} ms ({d[1] / digits:.1%}) "
                  f"| {o[0] * 1e3:.0f} ms ({o[0] / digits:.1%}) "
                  f"| {o[1] * 1e3:.0f} ms ({o[1] / digits:.1%}) "
                  f"| {d[2] * 1e3:.0f} / {d[3] * 1e3:.0f} ms | {book * 1e3:.0f} ms |")
    return space_file


if __name__ == "__main__":
    main()
