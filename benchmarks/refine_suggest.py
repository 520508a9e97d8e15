"""Suggest time of the `refine` sampler against the default TPE at 1,000 trials.

    python benchmarks/refine_suggest.py              # 1,000 trials, 20 suggests each
    python benchmarks/refine_suggest.py --trials 3000

An in-memory study on the digits `joint` space (27 conditional parameters, the layer
groups of digits-cnn) is filled with synthetic digits-shaped trials (`scale.py`'s
`fill`: metrics, constraints and attrs as `TrialObjective` stores them). Then each
sampler suggests `--reps` full configs (ask + `Space.sample`), each told COMPLETE
afterwards; the median of the suggests after the first is printed. `refine-always` plans
a refinement on every trial (share 1.0): the cost of a refinement step itself (reading
the trials, the feasible front, the taken parameter sets, storing the plan).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import optuna  # noqa: E402

from scale import fill, finish, now  # noqa: E402

from search.refine import RefineSampler  # noqa: E402
from search.samplers import make_sampler  # noqa: E402
from search.spec import StudySpec  # noqa: E402
from spaces import load_space  # noqa: E402

GROUPS = ["conv1", "conv2", "fc1", "fc2"]
SAMPLERS = {
    "tpe": lambda seed, space: make_sampler("tpe", seed, space),
    "refine": lambda seed, space: make_sampler("refine", seed, space),
    "refine-always": lambda seed, space: RefineSampler(make_sampler("tpe", seed, space),
                                                       space, share=1.0, seed=seed),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=20)
    a = ap.parse_args()
    space = load_space("joint").expand(GROUPS, {"prune.amount": GROUPS,
                                                "prune.threshold": GROUPS})
    spec = StudySpec(workload="digits-cnn", space="joint", space_toml="",
                     objectives=("accuracy:max", "latency_ms:min", "size_mb:min"),
                     constraints=("accuracy_drop<=0.01",))
    study = optuna.create_study(directions=spec.directions)
    t0 = now()
    fill(study, space, spec, a.trials, seed=0)
    print(f"filled {a.trials} trials in {now() - t0:.0f} s")
    rng = random.Random(2)
    for name, make in SAMPLERS.items():
        study.sampler = make(100, space)
        times = []
        for _ in range(a.reps + 1):
            t0 = now()
            t = study.ask()
            space.sample(t)
            times.append(now() - t0)
            finish(study, t, spec, rng, complete=True)
        print(f"{name:14s} at ~{a.trials} trials: median suggest "
              f"{statistics.median(times[1:]) * 1e3:.1f} ms (first {times[0] * 1e3:.0f} ms, "
              f"max {max(times[1:]) * 1e3:.1f} ms)")


if __name__ == "__main__":
    main()
