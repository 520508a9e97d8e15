"""Peer: Intel Neural Compressor (INC 3.10) accuracy-aware int8 tuning of the digits
model against csearch on the same question, in one run.

    pip install "neural-compressor[pt]==3.10"   # adds psutil, prettytable; keeps torch
    python benchmarks/inc_peer.py               # csearch up to 12 trials
    python benchmarks/inc_peer.py --quick       # csearch up to 4 trials

The question: the smallest/fastest digits model within 1% accuracy of the fp32 base.
- INC: `neural_compressor.torch.export.export` (PT2E; without intel-extension-for-pytorch
  INC 3.x quantizes through PT2E and asserts the model was exported first), then
  `autotune(..., TuningConfig(config_set=[static int8, dynamic int8], tolerable_loss=0.01))`
  with the workload's own evaluate as eval_fn and 512 calibration samples. INC's
  tolerable_loss is relative (1% of 0.988 = 0.0099 absolute), csearch's constraint is
  absolute (accuracy_drop <= 0.01): the same question to 1e-4. Clock: from before the
  export to autotune's return (the workload is already loaded, as INC users have it).
- csearch: `csearch run --space compression --constraint accuracy_drop<=0.01` as a
  subprocess (its clock includes imports, workload load from the disk cache and the
  baseline); the study is polled and the process stopped with SIGTERM (a clean stop)
  once a trial is feasible, i.e. time to the first feasible config.
- Both results are then measured the same way in this process: accuracy with the
  workload's evaluate, size = bytes of the stored model (csearch: its packed artifact,
  `model.safetensors` from `csearch export`; INC: `torch.save` of the converted model's
  state_dict; fp32: `torch.save` of the base state_dict), and latency = median of 300
  single-request forward passes after 20 warm-ups, 1 thread, no cache (csearch's own
  latency_ms metric includes its serve-replay cache and is printed separately).
"""

from __future__ import annotations

import argparse
import copy
import io
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import optuna
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _common import CLI, env, machine  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
warnings.filterwarnings("ignore")


def latency_ms(model: torch.nn.Module, xs: torch.Tensor) -> float:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for i in range(20):
                model(xs[i : i + 1])
            times = []
            for i in range(300):
                x = xs[i % len(xs) : i % len(xs) + 1]
                t0 = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)
    return statistics.median(times) * 1e3


def saved_bytes(state: dict) -> int:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.tell()


def run_inc(w: object) -> tuple[object | None, float, str]:
    try:
        from neural_compressor.torch.export import export
        from neural_compressor.torch.quantization import (TuningConfig, autotune,
                                                          get_default_dynamic_config,
                                                          get_default_static_config)
        from torchao.quantization.pt2e import allow_exported_model_train_eval
    except Exception as e:  # record exactly why INC will not run
        return None, 0.0, f"import failed: {type(e).__name__}: {e}"
    x = w.request_inputs

    def eval_fn(m: torch.nn.Module) -> float:
        if isinstance(m, torch.fx.GraphModule):
            allow_exported_model_train_eval(m)  # the workload's evaluate calls m.eval()
        return float(w.evaluate(m))

    def calib(m: torch.nn.Module) -> None:
        with torch.no_grad():
            for i in range(0, 512, 64):
                m(x[i : i + 64])

    t0 = time.perf_counter()
    try:
        batch = torch.export.Dim("batch", min=1, max=1024)
        em = export(copy.deepcopy(w.model), example_inputs=(x[:8],),
                    dynamic_shapes={"x": {0: batch}})
        q = autotune(em, tune_config=TuningConfig(
            config_set=[get_default_static_config(), get_default_dynamic_config()],
            tolerable_loss=0.01), eval_fn=eval_fn, run_fn=calib, example_inputs=(x[:8],))
    except Exception as e:
        return None, time.perf_counter() - t0, f"autotune failed: {type(e).__name__}: {e}"
    wall = time.perf_counter() - t0
    if q is None:
        return None, wall, "autotune found no config within the tolerance"
    allow_exported_model_train_eval(q)
    return q, wall, "ok"


def run_csearch(tmp: str, trials: int) -> tuple[float | None, int | None, str, object]:
    url = f"sqlite:///{tmp}/c.db"
    cmd = [*CLI, "run", "--workload", "digits-cnn", "--storage", url, "--study", "c",
           "--space", "compression",
           "--constraint", "accuracy_drop<=0.01", "--trials", str(trials), "--seed", "0",
           "--device", "cpu", "--quiet"]
    t0 = time.time()
    p = subprocess.Popen(cmd, env=env(PYTHONPATH=ROOT), cwd=tmp, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    found = None
    while p.poll() is None:
        time.sleep(1.0)
        try:
            st = optuna.load_study(study_name="c", storage=url)
        except Exception:
            continue
        from search.results import is_feasible

        ok = [t for t in st.get_trials(deepcopy=False) if t.state.name == "COMPLETE"
              and is_feasible(t)]
        if ok:
            found = min(ok, key=lambda t: t.datetime_complete)
            p.send_signal(signal.SIGTERM)
            p.wait()
            break
    p.wait()
    if found is None:
        return None, None, " ".join(cmd[2:]), None
    return found.datetime_complete.timestamp() - t0, found.number, " ".join(cmd[2:]), found


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    trials = 4 if a.quick else a.trials
    print(f"machine: {machine()}, torch {torch.__version__}")
    from objectives import load_workload

    w = load_workload("digits-cnn")
    base_acc = float(w.evaluate(w.model))
    xs = w.request_inputs[:300]
    fp32_bytes = saved_bytes(w.model.state_dict())
    fp32_lat = latency_ms(w.model, xs)
    print(f"fp32 base: accuracy {base_acc:.4f}, {fp32_bytes / 1e6:.3f} MB (torch.save), "
          f"latency {fp32_lat:.3f} ms/request")

    q, inc_wall, why = run_inc(w)
    try:
        import neural_compressor

        inc_version = neural_compressor.__version__
    except Exception:
        inc_version = "not installed"
    if q is None:
        print(f"INC {inc_version}: did not produce a model ({why}) after {inc_wall:.1f}s")
    else:
        acc = float(w.evaluate(q))
        size = saved_bytes(q.state_dict())
        lat = latency_ms(q, xs)
        print(f"INC {inc_version}: {inc_wall:.1f}s to a config within tolerance; "
              f"accuracy {acc:.4f} "
              f"(drop {base_acc - acc:.4f}), {size / 1e6:.3f} MB, latency {lat:.3f} ms/request "
              "(qdq graph, uncompiled)")

    with tempfile.TemporaryDirectory() as tmp:
        t_first, number, cmd, trial = run_csearch(tmp, trials)
        if trial is None:
            print(f"csearch {cmd}: no feasible trial within {trials} trials")
            return
        m = trial.user_attrs["metrics"]
        out = os.path.join(tmp, "exp")
        r = subprocess.run([*CLI, "export", "--storage", f"sqlite:///{tmp}/c.db", "--study", "c",
                            "--trial", str(number), "-o", out], env=env(PYTHONPATH=ROOT),
                           cwd=tmp, capture_output=True, text=True)
        if r.returncode:
            print(f"csearch export failed: {r.stderr.strip()}")
            return
        from search.export import load

        model = load(out)
        acc = float(w.evaluate(model))
        size = os.path.getsize(os.path.join(out, "model.safetensors"))
        lat = latency_ms(model, xs)
        print(f"csearch {cmd}: first feasible trial #{number} after {t_first:.1f}s "
              f"(params {trial.params}); re-measured accuracy {acc:.4f} "
              f"(drop {base_acc - acc:.4f}),"
              f" {size / 1e6:.3f} MB, latency {lat:.3f} ms/request; its own metrics: size "
              f"{m['size_mb']:.3f} MB, serve-replay latency_ms {m['latency_ms']:.4f} (with cache)")
        if q is not None:
            print(f"ratios csearch/INC: time to feasible {t_first / inc_wall:.2f}, size "
                  f"{size / saved_bytes(q.state_dict()):.2f}, "
                  f"latency {lat / latency_ms(q, xs):.2f}")


if __name__ == "__main__":
    main()
