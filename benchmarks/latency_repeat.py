"""Issue 14 repeatability: fresh one-trial MiniLM studies of the uncompressed config.

    flock /tmp/csearch-cpu.lock python benchmarks/latency_repeat.py [--studies 4]

Each study is a new process and a new database (as a user's `csearch run` is): its
baseline is measured at study start, then the one trial (no pruning, no quantization,
one fine-tune epoch at lr 1e-7, which moves no weight shape) is measured with the fp32
base model timed on the same batches, interleaved. Prints, per study, the stored
baseline's and the trial's latency objective (`latency_mean_ms`) and forward time per
miss (`model_latency_ms`), and the interleaved base model's; then the ratios the issue
asks for (trial / baseline within 0.9-1.1, baselines within 15 % of their median).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import csearch, load, machine  # noqa: E402

SPACE = """\
[params."prune.method"]
type = "categorical"
choices = ["none"]
[params."quant.method"]
type = "categorical"
choices = ["none"]
[params."train.epochs"]
type = "categorical"
choices = [1]
[params."train.lr"]
type = "categorical"
choices = [1e-7]
"""


def one(work: Path, i: int) -> dict:
    (work / "space.toml").write_text(SPACE)
    url = f"sqlite:///{work}/rep{i}.db"
    t0 = time.perf_counter()
    csearch("run", "--workload", "minilm", "--space", str(work / "space.toml"),
            "--trials", "1", "--study", f"rep{i}", "--storage", url, "-q")
    study = load(f"rep{i}", url)
    base = study.user_attrs["baseline"]
    trial = study.trials[0]
    m = trial.user_attrs["metrics"]
    return {
        "study": f"rep{i}", "seconds": round(time.perf_counter() - t0, 1),
        "lr": trial.params.get("train.lr"),
        "base_latency_mean_ms": base["latency_mean_ms"],
        "trial_latency_mean_ms": m["latency_mean_ms"],
        "base_model_ms": base["model_latency_ms"],
        "trial_model_ms": m["model_latency_ms"],
        "interleaved_base_model_ms": m["baseline_model_latency_ms"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--studies", type=int, default=4)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="csearch-rep-"))
    rows = [one(work, i) for i in range(a.studies)]
    for r in rows:
        r["trial/base latency_mean"] = r["trial_latency_mean_ms"] / r["base_latency_mean_ms"]
        r["trial/base model (study start)"] = r["trial_model_ms"] / r["base_model_ms"]
        r["trial/base model (interleaved)"] = (r["trial_model_ms"]
                                               / r["interleaved_base_model_ms"])
    summary = {}
    for key in ("base_latency_mean_ms", "base_model_ms", "interleaved_base_model_ms"):
        vals = [r[key] for r in rows]
        med = statistics.median(vals)
        summary[f"{key}: deviation from median"] = [round(v / med - 1, 4) for v in vals]
    for key in ("trial/base latency_mean", "trial/base model (study start)",
                "trial/base model (interleaved)"):
        summary[f"{key}: range"] = [round(min(r[key] for r in rows), 4),
                                    round(max(r[key] for r in rows), 4)]
    print(json.dumps({"machine": machine(), "rows": rows, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
