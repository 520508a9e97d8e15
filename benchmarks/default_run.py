"""Issue 24 acceptance: the bare `csearch run` (tiny-lm under its memory budget), as a new
user runs it, in a fresh folder with an empty csearch cache.

    flock /tmp/csearch-cpu.lock python benchmarks/default_run.py [--dir D] [-- EXTRA...]

EXTRA options go to both runs, e.g. `-- --constraint accuracy_drop<=0.01`. Measures:
1. `csearch run`: wall time, and the share of it inside trials (sum over the stored
   trials of datetime_complete - datetime_start, over the command's wall time); the
   widest line it prints; trials by state.
2. Over the feasible trials, each objective's max/min (accuracy: max - min in points).
3. The Pareto front: how many distinct serve.cache_ratio / serve.memory_ratio values and
   weight formats (each layer group's quantizer and bits) it holds.
4. `csearch run` again: its wall time, finished trials before and after, and whether it
   prints the same front.
5. `csearch report`: whether the page draws the memory split and says "server-bound".
Prints a JSON summary (also written to D/summary.json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import CLI, env, load, machine, now

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GROUPS = ("embeddings", "attn", "mlp", "lm_head")


def run(args: list[str], cwd: Path, cache: Path) -> tuple[float, str, str]:
    t0 = now()
    r = subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True,
                       env=env(PYTHONPATH=ROOT, CSEARCH_CACHE_DIR=str(cache),
                               CSEARCH_STORAGE=""))
    wall = now() - t0
    if r.returncode:
        raise SystemExit(f"csearch {' '.join(args)} failed: {r.stderr.strip()[-800:]}")
    return wall, r.stdout, r.stderr


def front_text(stdout: str) -> str:
    """The printed front: from the "Pareto front of" line to the end."""
    i = stdout.find("Pareto front of")
    return stdout[i:] if i >= 0 else ""


def weight_format(params: dict) -> str:
    """Each group's weights as served: fp32, int8 (dynamic) or lowbit N[/group]."""
    out = []
    for g in GROUPS:
        method = params.get(f"quant.method[{g}]", "inherit")
        bits = params.get(f"quant.bits[{g}]")
        if method == "inherit":
            method, bits = params.get("quant.method", "none"), params.get("quant.bits")
        fmt = {"none": "fp32", "int8_dynamic": "int8"}.get(method, f"{method}{bits}")
        if method == "lowbit" and params.get("quant.group_size"):
            fmt += f"/g{params['quant.group_size']}"
        out.append(f"{g}={fmt}")
    return " ".join(out)


def feasible(t) -> bool:
    return all(c <= 0 for c in t.system_attrs.get("constraints", []) or [])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default=None, help="work here (default: a temporary folder)")
    ap.add_argument("extra", nargs="*", help="options for both `csearch run`s (after --)")
    a = ap.parse_args()
    work = Path(a.dir or tempfile.mkdtemp(prefix="csearch-default-"))
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "cache"
    if (work / "studies.db").exists() or cache.exists():
        raise SystemExit(f"{work} is not fresh (studies.db or cache/ exists)")
    res: dict = {"machine": machine(), "extra": a.extra}

    epoch0 = time.time()
    wall, out, err = run(["run", *a.extra], work, cache)
    study = load("default", f"sqlite:///{work}/studies.db")
    trials = study.get_trials(deepcopy=False)
    in_trials = sum((t.datetime_complete - t.datetime_start).total_seconds()
                    for t in trials if t.datetime_complete and t.datetime_start)
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    res.update(wall_s=round(wall, 1), in_trials_s=round(in_trials, 1),
               share_in_trials=round(in_trials / wall, 3), states=states,
               widest_line=max(len(x) for x in out.splitlines()), front=front_text(out))
    res["before_first_trial_s"] = round(
        min(t.datetime_start.timestamp() for t in trials) - epoch0, 1)
    res["after_last_trial_s"] = round(
        epoch0 + wall - max(t.datetime_complete.timestamp() for t in trials
                            if t.datetime_complete), 1)

    ok = [t for t in trials if t.state.name == "COMPLETE" and feasible(t)]
    names = study.metric_names or []
    spread = {}
    for name in names:
        vals = [float(t.user_attrs["metrics"][name]) for t in ok]
        if not vals:
            continue
        if name == "accuracy":
            spread[name] = {"min": min(vals), "max": max(vals),
                            "points": round(100 * (max(vals) - min(vals)), 2)}
        else:
            spread[name] = {"min": min(vals), "max": max(vals),
                            "ratio": round(max(vals) / min(vals), 2) if min(vals) > 0 else None}
    res["feasible"] = len(ok)
    res["spread"] = spread

    pareto = json.loads(subprocess.run(
        [*CLI, "pareto", "--storage", f"sqlite:///{work}/studies.db", "--format", "json"],
        cwd=work, capture_output=True, text=True, env=env(PYTHONPATH=ROOT), check=True).stdout)
    res["front_trials"] = [
        {"number": p["number"], "cache_ratio": p["params"].get("serve.cache_ratio"),
         "memory_ratio": p["params"].get("serve.memory_ratio"),
         "kv_bits": p["params"].get("quant.kv_bits"), "weights": weight_format(p["params"]),
         **{k: p["metrics"].get(k) for k in (*names, "size_mb", "max_running")}}
        for p in pareto]
    res["front_distinct"] = {
        "cache_ratio": len({p["cache_ratio"] for p in res["front_trials"]}),
        "memory_ratio": len({p["memory_ratio"] for p in res["front_trials"]}),
        "weight_formats": len({p["weights"] for p in res["front_trials"]})}

    done_before = sum(t.state.is_finished() for t in trials)
    wall2, out2, _ = run(["run", *a.extra], work, cache)
    done_after = sum(t.state.is_finished()
                     for t in load("default", f"sqlite:///{work}/studies.db").get_trials())
    res["second_run"] = {"wall_s": round(wall2, 1), "finished_before": done_before,
                         "finished_after": done_after,
                         "same_front": front_text(out2) == front_text(out)}

    run(["report", "-o", str(work / "report.html")], work, cache)
    page = (work / "report.html").read_text()
    res["report"] = {"memory_split": "Memory split of the Pareto trials" in page,
                     "server_bound": "Server-bound" in page}
    (work / "summary.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    print(res["front"], file=sys.stderr)


if __name__ == "__main__":
    main()
