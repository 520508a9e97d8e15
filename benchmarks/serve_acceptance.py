"""Issue 14 acceptance, end to end with the real commands a user runs, in one go.

    flock /tmp/csearch-cpu.lock python benchmarks/serve_acceptance.py [--trials 20]

1. `csearch run --workload digits-cnn` (the digits study): every trial's latency objective
   against the stored `serve_overhead_ms`, its spread (max/min) and Spearman against
   `model_latency_ms`.
2. Two Pareto trials -> `csearch deploy` (v1, v2), `csearch promote M 1`, `csearch serve`
   following `production`.
3. `csearch loadtest` of 1,500 requests at concurrency 16: errors.
4. 50 requests: the served outputs' argmax against `search.export.load` of the same trial.
5. `csearch promote M 2` during a load test, then `csearch rollback M` during another:
   failed requests, seconds until `/version` says so.
6. `csearch loadtest --trial N` with the replay's own trace and concurrency: the served
   mean latency against the trial's `latency_mean_ms`.
Prints one JSON object; exit status 1 if a check fails.
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

import httpx
import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def csearch(*args: str, check: bool = True) -> str:
    out = subprocess.run(["csearch", *args], capture_output=True, text=True)
    if check and out.returncode != 0:
        raise SystemExit(f"csearch {' '.join(args)} failed: {out.stderr.strip()[-500:]}")
    return out.stdout


def wait_version(url: str, want: int, limit: float = 30.0) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit:
        try:
            if httpx.get(f"{url}/version", timeout=2).json().get("version") == want:
                return time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return float("inf")


def loadtest_while(url: str, common: list[str], action: list[str], want: int) -> dict:
    """Start a load test, run `action` (promote/rollback) in the middle of it."""
    p = subprocess.Popen(["csearch", "loadtest", "--url", url, *common,
                          "--requests", "3000", "--concurrency", "16", "--format", "json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2.0)
    csearch(*action)
    seconds = wait_version(url, want)
    out, err = p.communicate(timeout=600)
    if p.returncode != 0:
        raise SystemExit(f"loadtest failed: {err.strip()[-500:]}")
    return {"seconds_to_version": seconds, **json.loads(out)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--dir", default=None, help="work here (default: a temporary folder)")
    a = ap.parse_args()
    work = Path(a.dir or tempfile.mkdtemp(prefix="csearch-acc-"))
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    storage = f"sqlite:///{work}/acc.db"
    common = ["--study", "acc", "--storage", storage]
    res: dict = {"dir": str(work)}
    checks: dict[str, bool] = {}

    # 1. the default study
    t0 = time.perf_counter()
    csearch("run", *common, "--workload", "digits-cnn", "--trials", str(a.trials), "-q")
    res["run_seconds"] = round(time.perf_counter() - t0, 1)
    studies = json.loads(csearch("studies", "--storage", storage, "--format", "json"))
    objective = studies[0]["objectives"][1].split(":")[0]
    trials = [t for t in json.loads(csearch("trials", *common, "--format", "json"))
              if t["state"] == "COMPLETE"]
    import optuna

    study = optuna.load_study(study_name="acc", storage=storage)
    overhead = float(study.user_attrs["environment"]["serve_overhead_ms"])
    lat = np.array([t["metrics"][objective] for t in trials])
    model = np.array([t["metrics"]["model_latency_ms"] for t in trials])
    res["default_run"] = {
        "objective": objective, "serve_overhead_ms": overhead,
        "min_ms": float(lat.min()), "max_ms": float(lat.max()),
        "max_over_min": float(lat.max() / lat.min()),
        "spearman_vs_model_latency": float(spearmanr(lat, model).statistic),
        "per_trial": [[t["number"], round(t["metrics"][objective], 3),
                       round(t["metrics"]["model_latency_ms"], 4),
                       round(t["metrics"]["cache_hit_rate"], 3)] for t in trials]}
    checks["no latency objective below serve_overhead_ms"] = bool(lat.min() >= overhead)
    checks["max/min latency objective >= 1.5"] = res["default_run"]["max_over_min"] >= 1.5
    checks["spearman >= 0.4"] = res["default_run"]["spearman_vs_model_latency"] >= 0.4

    # 2. deploy two Pareto trials, serve production
    front = json.loads(csearch("pareto", *common, "--format", "json"))
    front.sort(key=lambda r: r["metrics"]["size_mb"])
    a_trial, b_trial = front[0]["number"], front[-1]["number"]
    csearch("deploy", *common, "--trial", str(a_trial))
    csearch("deploy", *common, "--trial", str(b_trial))
    csearch("promote", "acc", "1", "--storage", storage)
    from search.serving import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(["csearch", "serve", "--name", "acc", "--port", str(port),
                               "--storage", storage],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        res["server_start_s"] = wait_version(url, 1, limit=120)
        res["trials_deployed"] = {"v1": a_trial, "v2": b_trial}

        # 3. load test
        lt = json.loads(csearch("loadtest", "--url", url, *common, "--requests", "1500",
                                "--concurrency", "16", "--format", "json"))
        res["loadtest_1500_c16"] = lt
        checks["loadtest 1500 @16: 0 errors"] = lt["errors"] == 0 and lt["requests"] == 1500

        # 4. served outputs against export.load of the same trial
        import torch

        from objectives import load_workload
        from search.export import load

        csearch("export", *common, "--trial", str(a_trial), "-o", str(work / "v1"))
        ref = load(str(work / "v1"))
        w = load_workload("digits-cnn")
        same = 0
        with httpx.Client(base_url=url, timeout=30) as c:
            for i in range(50):
                item = w.request(i)
                body = c.post("/predict", json={"inputs": [item.tolist()]}).json()
                with torch.inference_mode():
                    mine = ref(item.unsqueeze(0)).argmax(-1).item()
                same += int(np.argmax(body["outputs"][0]) == mine)
        res["argmax_equal_of_50"] = same
        checks["argmax equal on 50 requests"] = same == 50

        # 5. promote and rollback under load
        res["promote_under_load"] = loadtest_while(url, common, ["promote", "acc", "2",
                                                                 "--storage", storage], 2)
        res["rollback_under_load"] = loadtest_while(url, common, ["rollback", "acc",
                                                                  "--storage", storage], 1)
        for k in ("promote_under_load", "rollback_under_load"):
            checks[f"{k}: 0 errors, /version within 5 s"] = (
                res[k]["errors"] == 0 and res[k]["seconds_to_version"] <= 5.0)

        # 6. the replay's own trace and concurrency against the trial's prediction
        lt = json.loads(csearch("loadtest", "--url", url, *common, "--trial", str(a_trial),
                                "--format", "json"))
        predicted = next(t for t in trials if t["number"] == a_trial)["metrics"][
            "latency_mean_ms"]
        res["replay_trace"] = {"served_mean_ms": lt["mean_ms"], "predicted_mean_ms": predicted,
                               "ratio": lt["mean_ms"] / predicted, **lt}
        checks["served mean within 2x of latency_mean_ms"] = 0.5 <= lt["mean_ms"] / predicted <= 2
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    csearch("report", *common, "-o", str(work / "report.html"))
    checks["report shows predicted against served"] = (
        'id="fig-served"' in (work / "report.html").read_text())
    res["checks"] = checks
    print(json.dumps(res, indent=1))
    sys.exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
