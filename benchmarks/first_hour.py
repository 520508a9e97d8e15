"""Issue 26: how fast a bad argument is refused, and what a redirected `csearch run` log
holds (benchmarks/RESULTS.md, "Issue 26").

    python benchmarks/first_hour.py errors [--repeats 5]
    python benchmarks/first_hour.py log DIR

`errors` times `csearch run --trials -1` and `csearch run --constraint 'accuracy_drop<<0.01'`
(exit status 2 each) as fresh processes. `log DIR` reads DIR/log.txt, written by
`csearch run ... > log.txt 2>&1`, and DIR/counts.txt, lines of `UNIX_TIME LINE_COUNT`
sampled every second while it ran (so each log line's time is known to a second), and
reports the lines per finished trial and the most lines any 10 s without a finished trial
held.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = {"--trials -1": ["run", "--trials", "-1"],
         "malformed --constraint": ["run", "--constraint", "accuracy_drop<<0.01"]}


def errors(repeats: int) -> None:
    for name, args in CASES.items():
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            proc = subprocess.run(["csearch", *args], capture_output=True, text=True)
            times.append(time.perf_counter() - t0)
            assert proc.returncode == 2, proc.stderr
        print(f"{name:<24} exit 2 in {statistics.median(times):.2f} s median, "
              f"{max(times):.2f} s max of {repeats}; {proc.stderr.strip()}")


def _is_trial_line(line: str) -> bool:
    parts = line.split()
    return len(parts) > 2 and parts[0] == "trial" and parts[1].isdigit()


def log(folder: Path) -> None:
    lines = (folder / "log.txt").read_text().splitlines()
    seen: list[float] = []  # first time each line was in the file
    for row in (folder / "counts.txt").read_text().splitlines():
        t, n = row.split()
        while len(seen) < int(n):
            seen.append(float(t))
    seen += [seen[-1] if seen else 0.0] * (len(lines) - len(seen))
    t0 = seen[0] if seen else 0.0
    trials = [i for i, ln in enumerate(lines) if _is_trial_line(ln)]
    other = [i for i in range(len(lines)) if i not in set(trials)]
    print(f"{len(lines)} lines: {len(trials)} finished-trial lines, {len(other)} others")
    # The most lines in any 10 s window that holds no finished trial.
    worst = 0
    stage_times = [seen[i] for i in other]
    trial_times = [seen[i] for i in trials]
    for i, t in enumerate(stage_times):
        window = [s for s in stage_times[i:] if s < t + 10]
        if not any(t <= x < t + 10 for x in trial_times):
            worst = max(worst, len(window))
    gaps = [b - a for a, b in zip(trial_times, trial_times[1:])]
    print(f"longest time between finished trials: {max(gaps, default=0):.0f} s; most lines "
          f"in a 10 s window without a finished trial: {worst} (times to 1 s)")
    print(f"log spans {seen[-1] - t0:.0f} s" if seen else "empty log")
    dupes = len(lines) - len(set(lines))
    print(f"repeated lines: {dupes}")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    e = sub.add_parser("errors")
    e.add_argument("--repeats", type=int, default=5)
    lg = sub.add_parser("log")
    lg.add_argument("folder", type=Path)
    a = ap.parse_args()
    if a.what == "errors":
        errors(a.repeats)
    else:
        log(a.folder)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
