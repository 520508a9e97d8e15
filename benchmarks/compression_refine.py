"""Issue 16's measures for `search_efficiency.py --question compression`.

The question: digits, `csearch run --space compression --trials 40 --objective
accuracy:max --objective size_mb:min --constraint "accuracy_drop<=0.01"`, every sampler
given the same warm start (sensitivity pass, its seed and the Deep Compression ladder: 4
enqueued trials of 40). Per run:

- the best feasible size (feasible = accuracy drop <= 1 point, the constraint), over the
  seeded (enqueued) trials and over the sampler's own trials, and their ratio (the issue
  asks seeded / sampler >= 1.2 in 4 of 5 seeds);
- the hypervolume after 10, 20 and 40 trials of the feasible points in (1 - accuracy,
  log size): x = (1 - accuracy) / 0.05, y = 1 + log10(size_mb / 0.6) / 3, reference point
  (1, 1). A log size axis because compression is a ratio: on a linear axis every trial
  past 20x fills 97 % of it and a 1.2x smaller model is invisible. y = 0 is 1000x smaller
  than 0.6 MB (the fp32 model is 0.556 MB); smaller sizes count as 1000x;
- the share of the final feasible Pareto front that came from sampler trials.

    python benchmarks/search_efficiency.py --summary benchmarks/results/refine.jsonl
"""

from __future__ import annotations

import math
import statistics


ERR_REF, SIZE_REF, DECADES = 0.05, 0.6, 3.0
CHECKPOINTS = (10, 20, 40)


def _xy(p: list) -> tuple[float, float]:
    y = 1.0 + math.log10(p[1] / SIZE_REF) / DECADES
    return p[0] / ERR_REF, max(0.0, y)


def hv2(points: list[tuple[float, float]]) -> float:
    """2-D hypervolume of minimisation points up to (1, 1)."""
    pts = sorted((x, y) for x, y in points if x < 1 and y < 1)
    hv, best_y = 0.0, 1.0
    for x, y in pts:
        if y < best_y:
            hv += (1 - x) * (best_y - y)
            best_y = y
    return hv


def hv_at(points: list, n: int) -> float:
    return hv2([_xy(p) for p in points[:n] if p is not None and p[2]])


def front(points: list) -> list[list]:
    """The feasible non-dominated points (duplicates of a front point included)."""
    ok = [p for p in points if p is not None and p[2]]
    return [p for p in ok if not any(q[0] <= p[0] and q[1] <= p[1] and (q[0] < p[0] or
                                                                        q[1] < p[1])
                                     for q in ok)]


def best_size(points: list, seeded: bool) -> float:
    sizes = [p[1] for p in points if p is not None and p[2] and p[3] == seeded]
    return min(sizes) if sizes else math.inf


def measures(r: dict) -> dict:
    pts = r["points"]
    seeded, own = best_size(pts, True), best_size(pts, False)
    fr = front(pts)
    return {"seeded_mb": seeded, "sampler_mb": own,
            "ratio": seeded / own if math.isfinite(own) else 0.0,
            "hv": [hv_at(pts, c) for c in CHECKPOINTS],
            "share": sum(not p[3] for p in fr) / len(fr) if fr else 0.0,
            "feasible_own": sum(1 for p in pts if p is not None and p[2] and not p[3])}


def summarize_compression(rows: list[dict]) -> None:
    names = list(dict.fromkeys(r["sampler"] for r in rows))
    print(f"hypervolume: x = (1 - acc) / {ERR_REF}, y = 1 + log10(size_mb / {SIZE_REF}) / "
          f"{DECADES:g}, reference (1, 1); feasible = accuracy_drop <= 0.01")
    print("| sampler | runs | best seeded MB (median) | best sampler MB (median) | "
          "seeded / sampler per seed | seeds >= 1.2x | "
          + " | ".join(f"HV@{c} median" for c in CHECKPOINTS)
          + " | front share from sampler (median) | sampler feasible trials (median) |")
    print("|" + "---|" * (7 + len(CHECKPOINTS)))
    med_hv40: dict[str, float] = {}
    for n in names:
        ms = [measures(r) for r in sorted((r for r in rows if r["sampler"] == n),
                                          key=lambda r: r["seed"])]
        hv = [statistics.median(m["hv"][i] for m in ms) for i in range(len(CHECKPOINTS))]
        med_hv40[n] = hv[-1]
        ratios = ", ".join(f"{m['ratio']:.2f}" for m in ms)
        print(f"| {n} | {len(ms)} | {statistics.median(m['seeded_mb'] for m in ms):.4f} | "
              f"{statistics.median(m['sampler_mb'] for m in ms):.4f} | {ratios} | "
              f"{sum(m['ratio'] >= 1.2 for m in ms)}/{len(ms)} | "
              + " | ".join(f"{v:.4f}" for v in hv)
              + f" | {statistics.median(m['share'] for m in ms):.2f} | "
              f"{statistics.median(m['feasible_own'] for m in ms):g} |")
    for n in names:
        others = {o: v for o, v in med_hv40.items() if o != n}
        if others:
            beats = all(med_hv40[n] >= v for v in others.values())
            print(f"{n}: median HV@40 {med_hv40[n]:.4f} >= every other sampler's: {beats}")


__all__ = ["hv2", "measures", "summarize_compression"]
