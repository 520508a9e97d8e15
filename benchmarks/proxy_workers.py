"""8 local workers through `csearch proxy` against 8 straight to PostgreSQL, in one run:
database connections held by csearch processes, and trials per minute.

    python benchmarks/proxy_workers.py [--url postgresql://postgres@127.0.0.1:5432/test]
        [--workers 8] [--trials 40] [--pool-size 4]

Each configuration gets its own study (compression space on digits, same seed). The
clock runs from the workers' start to their exit (start-up included). Connections are
sampled from pg_stat_activity every 0.2 s by the `application_name` csearch sets
(`csearch-<pid>`): the peak of their total at one moment, and how many csearch processes
held one. Afterwards: finished trials, and trials left RUNNING (must be none).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import threading
import time

import psycopg
from optuna.trial import TrialState

from _common import CLI, csearch, delete, env, load, machine, now, worker


class Sampler(threading.Thread):
    """Peak connections of csearch processes (not this script's) in pg_stat_activity."""

    def __init__(self, dsn: str):
        super().__init__(daemon=True)
        self.dsn, self.stop = dsn, threading.Event()
        self.peak_total, self.apps = 0, set()

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                rows = conn.execute(
                    "SELECT application_name, count(*) FROM pg_stat_activity "
                    "WHERE application_name LIKE 'csearch-%' GROUP BY application_name"
                ).fetchall()
                rows = [(a, n) for a, n in rows if a != f"csearch-{os.getpid()}"]
                self.peak_total = max(self.peak_total, sum(n for _, n in rows))
                self.apps.update(a for a, _ in rows)
                time.sleep(0.2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(url: str, n: int, trials: int, pool_size: int | None) -> dict:
    name = f"bench-{'proxy' if pool_size else 'direct'}-{n}w"
    delete(name, url)
    proxy = None
    target = url
    if pool_size:
        port = _free_port()
        proxy = subprocess.Popen([*CLI, "proxy", "--storage", url, "--port", str(port),
                                  "--pool-size", str(pool_size)], env=env(),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        target = f"grpc://127.0.0.1:{port}"
    try:
        csearch("create", "--workload", "digits-cnn", "--study", name, "--storage", target,
                "--space", "compression",
                "--trials", str(trials), "--seed", "0", "--artifacts", "none")
        sampler = Sampler(url.replace("postgresql+psycopg://", "postgresql://"))
        sampler.start()
        t0 = now()
        threads = max(1, (os.cpu_count() or 1) // n)  # as `csearch run --workers` does
        procs = [worker(name, target, "--threads", str(threads)) for _ in range(n)]
        codes = [p.wait() for p in procs]
        elapsed = now() - t0
        sampler.stop.set()
        sampler.join()
    finally:
        if proxy is not None:
            proxy.send_signal(signal.SIGINT)
            proxy.wait(timeout=30)
    trials_ = load(name, url).trials
    delete(name, url)
    finished = sum(t.state.is_finished() for t in trials_)
    return {"elapsed": elapsed, "finished": finished, "codes": codes,
            "running": sum(t.state == TrialState.RUNNING for t in trials_),
            "peak": sampler.peak_total, "procs": len(sampler.apps),
            "per_min": finished / elapsed * 60}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--pool-size", type=int, default=4)
    a = ap.parse_args()
    print(f"machine: {machine()}; {a.workers} workers, budget {a.trials} trials")
    for label, pool in (("direct PostgreSQL", None), (f"proxy (pool {a.pool_size})",
                                                      a.pool_size)):
        r = run(a.url, a.workers, a.trials, pool)
        print(f"{label}: {r['finished']} trials in {r['elapsed']:.1f}s = "
              f"{r['per_min']:.1f} trials/min; peak DB connections {r['peak']} from "
              f"{r['procs']} csearch process(es); RUNNING afterwards {r['running']}; "
              f"exit codes {r['codes']}")


if __name__ == "__main__":
    main()
