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
    # While trials run (up to the last finished trial; the front table follows at once):
    # the shortest time between two other lines with no finished trial between them.
    last = trials[-1] if trials else len(lines) - 1
    gaps, prev = [], None
    for i in range(last + 1):
        if i in set(trials):
            prev = None
            continue
        if prev is not None:
            gaps.append((seen[i] - seen[prev], lines[prev], lines[i]))
        prev = i
    between = [b - a for a, b in zip([seen[i] for i in trials], [seen[i] for i in trials][1:])]
    print(f"longest time between finished trials: {max(between, default=0):.0f} s")
    if gaps:
        g = min(gaps)
        print(f"{len(gaps)} pairs of other lines with no finished trial between; shortest "
              f"time between them {g[0]:.0f} s (times to 1 s): {g[1]!r} -> {g[2]!r}")
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
