"""GPU: digits and MiniLM studies with `--device cuda` against `--device cpu`, in one run.

    python benchmarks/gpu.py             # 6 trials per (workload, device)
    python benchmarks/gpu.py --quick     # 3 trials

Where no CUDA GPU is available it says so and exits 0.

Each (workload, device) pair is a `csearch run --space compression --seed 0 --trials N`
subprocess on its own SQLite file; the same seed gives both devices the same sampled
configs for the random start-up trials. Reported per pair: median trial wall time
(datetime_start..datetime_complete) and median latency_ms / latency_p99_ms, and the
CUDA/CPU ratios. Latency on CUDA is timed with `torch.cuda.synchronize()` (see
`objectives/serve.py`, `_sync`); this script checks that the serve module synchronises
before it reports numbers.
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import subprocess
import sys
import tempfile

import optuna
import torch

from _common import CLI, env, machine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(tmp: str, workload: str, device: str, trials: int) -> dict[str, float] | str:
    url = f"sqlite:///{tmp}/{workload}-{device.replace(':', '')}.db"
    r = subprocess.run([*CLI, "run", "--storage", url, "--study", "g", "--workload", workload,
                        "--space", "compression", "--device", device, "--trials", str(trials),
                        "--seed", "0", "--artifacts", "none", "--quiet"],
                       env=env(PYTHONPATH=ROOT), cwd=tmp, capture_output=True, text=True)
    if r.returncode:
        return r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"rc {r.returncode}"
    st = optuna.load_study(study_name="g", storage=url)
    done = [t for t in st.trials if t.state.name == "COMPLETE"]
    med = lambda xs: statistics.median(xs) if xs else float("nan")  # noqa: E731
    return {
        "trial_s": med([(t.datetime_complete - t.datetime_start).total_seconds() for t in done]),
        "latency_ms": med([t.user_attrs["metrics"]["latency_ms"] for t in done]),
        "latency_p99_ms": med([t.user_attrs["metrics"]["latency_p99_ms"] for t in done]),
        "n": len(done),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workloads", default="digits-cnn,minilm")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print(f"machine: {machine()}: no CUDA GPU available (torch {torch.__version__}, "
              f"cuda build {torch.version.cuda}); skipping the GPU benchmark")
        return
    sys.path.insert(0, ROOT)
    from objectives import serve

    src = inspect.getsource(serve)
    synced = "torch.cuda.synchronize" in src
    print(f"machine: {machine()}, GPU {torch.cuda.get_device_name(0)}; serve replay "
          f"{'calls' if synced else 'does NOT call'} torch.cuda.synchronize()")
    trials = 3 if a.quick else a.trials
    with tempfile.TemporaryDirectory() as tmp:
        for wl in a.workloads.split(","):
            res = {dev: run(tmp, wl, dev, trials) for dev in ("cpu", "cuda")}
            for dev, v in res.items():
                if isinstance(v, str):
                    print(f"{wl} {dev}: failed: {v}")
                else:
                    print(f"{wl} {dev}: {v['n']} trials, median trial {v['trial_s']:.2f}s, "
                          f"latency_ms {v['latency_ms']:.4f}, p99 {v['latency_p99_ms']:.3f}")
            if all(isinstance(v, dict) for v in res.values()):
                c, g = res["cpu"], res["cuda"]
                print(f"{wl} cuda/cpu: trial time {g['trial_s'] / c['trial_s']:.2f}, "
                      f"latency_ms {g['latency_ms'] / c['latency_ms']:.2f}, "
                      f"p99 {g['latency_p99_ms'] / c['latency_p99_ms']:.2f}")


if __name__ == "__main__":
    main()
