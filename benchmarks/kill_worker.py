"""Issue 5 acceptance: 3 workers on PostgreSQL, a budget of 60 compression trials on
digits, one worker SIGKILLed mid-trial. Checks 60-62 finished trials, the killed trial
FAIL and retried, nothing RUNNING, no duplicate numbers.

    python benchmarks/kill_worker.py [--url postgresql://postgres@127.0.0.1:5432/test]

Uses the default heartbeat (10 s interval, 30 s grace), so the killed trial is failed
and re-queued by a live worker within about a minute.
"""

from __future__ import annotations

import argparse
import signal
import time

from optuna.trial import TrialState

from _common import csearch, delete, load, machine, now, worker


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--trials", type=int, default=60)
    a = ap.parse_args()
    name = "bench-kill"
    delete(name, a.url)
    csearch("create", "--workload", "digits-cnn", "--study", name, "--storage", a.url,
            "--space", "compression",
            "--trials", str(a.trials), "--seed", "0", "--artifacts", "none")
    print(f"machine: {machine()}")
    t0 = now()
    procs = [worker(name, a.url) for _ in range(3)]
    victim, killed, killed_at = procs[0], None, None
    deadline = time.monotonic() + 600
    while killed is None and time.monotonic() < deadline:
        for t in load(name, a.url).get_trials(states=(TrialState.RUNNING,)):
            if str(t.user_attrs.get("worker", "")).endswith(f":{victim.pid}"):
                done = len([x for x in load(name, a.url).trials if x.state.is_finished()])
                if done >= 5:  # kill once the study is well under way
                    victim.send_signal(signal.SIGKILL)
                    killed, killed_at = t.number, now() - t0
                    break
        time.sleep(0.1)
    for p in procs:
        p.wait()
    trials = load(name, a.url).trials
    states = {s.name: len([t for t in trials if t.state == s]) for s in TrialState}
    finished = len([t for t in trials if t.state.is_finished()])
    by_number = {t.number: t for t in trials}
    retried = [t.number for t in trials if t.system_attrs.get("failed_trial") == killed]
    failed_at = by_number[killed].datetime_complete if killed is not None else None
    print(f"killed trial {killed} at {killed_at:.1f}s; its state: {by_number[killed].state.name}; "
          f"failed at {failed_at} (UTC); retried as {retried}")
    print(f"finished trials: {finished} (budget {a.trials}); states {states}")
    print(f"duplicate numbers: {len(trials) - len(by_number)}; wall time {now() - t0:.0f}s")
    ok = (a.trials <= finished <= a.trials + 2 and states["RUNNING"] == 0
          and by_number[killed].state == TrialState.FAIL and retried
          and len(trials) == len(by_number))
    print("PASS" if ok else "FAIL")
    delete(name, a.url)


if __name__ == "__main__":
    main()
