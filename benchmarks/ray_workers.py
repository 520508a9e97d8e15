"""Issue 18 acceptance for Ray as the launcher, on PostgreSQL and a local Ray instance:

1. `csearch run --ray --workers 2 --trials 20`: finished trials, distinct workers.
2. The same with one Ray worker process SIGKILLed mid-trial (by the pid in its trial's
   `worker` attr): budget met, the killed trial FAIL and retried, nothing RUNNING.

    python benchmarks/ray_workers.py [--url postgresql://postgres@127.0.0.1:5432/test]
        [--trials 20]

The kill run uses a 2 s heartbeat and a 6 s grace period (CSEARCH_HEARTBEAT_INTERVAL,
CSEARCH_GRACE_PERIOD): a 20-trial digits study lasts about half a minute here, shorter
than the default 30 s grace, and a trial found stale only after the budget is reached is
failed by `run` at the end but not retried (the budget is spent).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import time

from optuna.trial import TrialState

from _common import CLI, delete, env, load, machine, now


def start(name: str, url: str, trials: int, **extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*CLI, "run", "--ray", "--workers", "2", "--workload", "digits-cnn", "--study", name,
         "--storage", url,
         "--space", "compression", "--trials", str(trials), "--seed", "0",
         "--artifacts", "none", "--quiet"],
        env=env(**extra), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def summary(name: str, url: str) -> tuple[dict, list]:
    trials = load(name, url).get_trials()
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    return states, trials


def plain(url: str, trials: int) -> None:
    name = "bench-ray-plain"
    delete(name, url)
    t0 = now()
    p = start(name, url, trials)
    _, err = p.communicate(timeout=1800)
    states, ts = summary(name, url)
    finished = [t for t in ts if t.state.is_finished()]
    workers = {t.user_attrs.get("worker") for t in finished}
    print(f"plain: exit {p.returncode} in {now() - t0:.1f}s; states {states}; "
          f"{len(finished)} finished from {len(workers)} distinct workers {sorted(workers)}")
    if p.returncode:
        print(err[-2000:])
    delete(name, url)


def killed(url: str, trials: int) -> None:
    name = "bench-ray-kill"
    delete(name, url)
    t0 = now()
    p = start(name, url, trials, CSEARCH_HEARTBEAT_INTERVAL="2", CSEARCH_GRACE_PERIOD="6")
    victim = number = None
    deadline = time.monotonic() + 600
    while victim is None and time.monotonic() < deadline and p.poll() is None:
        try:
            running = load(name, url).get_trials(states=(TrialState.RUNNING,))
        except Exception:  # the study is not created yet
            running = []
        for t in running:
            pid = int(str(t.user_attrs.get("worker", ":0")).rsplit(":", 1)[1])
            if pid and pid != p.pid and t.number >= 2:  # a Ray worker, mid-study
                victim, number = pid, t.number
                break
        time.sleep(0.1)
    assert victim is not None, "no Ray worker trial seen RUNNING"
    os.kill(victim, signal.SIGKILL)
    print(f"kill: SIGKILLed Ray worker pid {victim} during trial {number} "
          f"at {now() - t0:.1f}s")
    _, err = p.communicate(timeout=1800)
    states, ts = summary(name, url)
    by_number = {t.number: t for t in ts}
    retries = [t for t in ts if t.system_attrs.get("failed_trial") == number]
    finished = [t for t in ts if t.state.is_finished()]
    print(f"kill: exit {p.returncode} in {now() - t0:.1f}s; states {states}; "
          f"{len(finished)} finished; killed trial {number} is "
          f"{by_number[number].state.name}; retries "
          f"{[(t.number, t.state.name, t.params == by_number[number].params) for t in retries]}"
          f"; RUNNING afterwards {states.get('RUNNING', 0)}; distinct workers "
          f"{len({t.user_attrs.get('worker') for t in finished})}")
    if p.returncode:
        print(err[-2000:])
    delete(name, url)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--trials", type=int, default=20)
    a = ap.parse_args()
    print(f"machine: {machine()}")
    plain(a.url, a.trials)
    killed(a.url, a.trials)


if __name__ == "__main__":
    main()
