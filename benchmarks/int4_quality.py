"""Issue 25's quality acceptance for 4-bit weights on `tiny-lm`: held-out next-token
accuracy of fp32, round-to-nearest int4 (`int4_weight_only`) and HQQ int4 (`int4_hqq`) at
the same group size, every Linear on the int4 kernel (a layer whose shape the kernel
cannot take falls back to int8 weight-only; the run lists them), the embedding table int8
per row, as csearch quantizes a trial (`quantize_weights` -> `apply_runtime` with the
stored codes, then the workload's own held-out evaluation).

    nice -n 10 python benchmarks/int4_quality.py --group-sizes 64,32
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from objectives.pack import pack_state  # noqa: E402
from objectives.prune import prunable_layers  # noqa: E402
from objectives.quantize import apply_runtime, quantize_weights  # noqa: E402
from objectives.workloads import load_workload  # noqa: E402
from spaces import QuantConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workload", default="tiny-lm")
    ap.add_argument("--group-sizes", default="64")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    wl = load_workload(args.workload)
    out: dict[str, dict[str, float]] = {"fp32": {"accuracy": float(wl.evaluate(wl.model)),
                                                 "size_mb": len(pack_state(
                                                     wl.model.state_dict(), {})) / 1e6}}
    for g in map(int, args.group_sizes.split(",")):
        for method in ("int4_weight_only", "int4_hqq"):
            m = copy.deepcopy(wl.model)
            cfg = QuantConfig(method, group_size=g)
            codes = quantize_weights(m, cfg)
            size = len(pack_state(m.state_dict(), codes)) / 1e6
            layers = prunable_layers(m)
            fallback = sorted(n for n, q in codes.items() if q.bits == 8 and n in layers)
            m = apply_runtime(m, cfg, torch.device("cpu"), quantized=codes)
            out[f"{method} g{g}"] = {"accuracy": float(wl.evaluate(m)), "size_mb": size,
                                     "int8_fallback_layers": fallback}  # type: ignore[dict-item]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
