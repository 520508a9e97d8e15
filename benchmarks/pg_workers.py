"""Trials per minute with 1 and 2 local workers on PostgreSQL, and DB connections per
worker, measured in one run.

    python benchmarks/pg_workers.py [--url postgresql://postgres@127.0.0.1:5432/test] [--trials 16]

Each configuration gets its own study (compression space on digits, same seed); the
clock runs from the workers' start to their exit, so it includes their start-up (import,
workload build from the disk cache). Connections are sampled from pg_stat_activity by the
`application_name` csearch sets (`csearch-<pid>`).
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections import Counter

import psycopg

from _common import csearch, delete, load, machine, now, worker


def sample_connections(dsn: str, stop: threading.Event, peak: Counter) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not stop.is_set():
            rows = conn.execute(
                "SELECT application_name, count(*) FROM pg_stat_activity "
                "WHERE application_name LIKE 'csearch-%' GROUP BY application_name"
            ).fetchall()
            for app, n in rows:
                if app != f"csearch-{os.getpid()}":  # not this script's own reads
                    peak[app] = max(peak[app], n)
            time.sleep(0.2)


def run(url: str, n_workers: int, trials: int) -> tuple[float, int, list[int]]:
    name = f"bench-pg-{n_workers}w"
    delete(name, url)
    csearch("create", "--workload", "digits-cnn", "--study", name, "--storage", url,
            "--space", "compression",
            "--trials", str(trials), "--seed", "0", "--artifacts", "none")
    stop, peak = threading.Event(), Counter()
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    sampler = threading.Thread(target=sample_connections, args=(dsn, stop, peak), daemon=True)
    sampler.start()
    t0 = now()
    # Each worker gets its share of the cores (csearch run --workers does the same).
    threads = max(1, (os.cpu_count() or 1) // n_workers)
    procs = [worker(name, url, "--threads", str(threads)) for _ in range(n_workers)]
    for p in procs:
        p.wait()
    elapsed = now() - t0
    stop.set()
    sampler.join()
    finished = len([t for t in load(name, url).trials if t.state.is_finished()])
    delete(name, url)
    return elapsed, finished, sorted(peak.values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--trials", type=int, default=16)
    a = ap.parse_args()
    print(f"machine: {machine()}")
    results = {}
    for n in (1, 2):
        elapsed, finished, conns = run(a.url, n, a.trials)
        results[n] = finished / elapsed * 60
        print(f"{n} worker(s): {finished} trials in {elapsed:.1f}s = {results[n]:.1f} trials/min; "
              f"peak DB connections per worker {conns}")
    print(f"speed-up 2 vs 1 workers: {results[2] / results[1]:.2f}x")


if __name__ == "__main__":
    main()
