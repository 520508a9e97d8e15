"""Parallel workers on a shared PostgreSQL database: budget, SIGKILL, SIGTERM, restart.

These run real `csearch` processes against the server in CSEARCH_TEST_POSTGRES_URL.
Every loop is bounded in time and targets only 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

CLI = [sys.executable, "-m", "search.cli"]
ROOT = Path(__file__).resolve().parents[2]  # plugin workloads import from here
SLOW = "tests.integration.slow_workload:make_workload"
# Short heartbeats so a killed worker's trial is stale within seconds, not half a minute.
FAST_HEARTBEAT = {"CSEARCH_HEARTBEAT_INTERVAL": "1", "CSEARCH_GRACE_PERIOD": "3"}


def _env(tmp_path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **FAST_HEARTBEAT)
    env["CSEARCH_ARTIFACTS"] = str(tmp_path / "artifacts")
    env.update(extra)
    return env


def _create(url: str, name: str, trials: int, tmp_path, space: str = "compression",
            workload: str = "digits-cnn") -> None:
    r = subprocess.run(
        [*CLI, "create", "--study", name, "--storage", url, "--space", space,
         "--trials", str(trials), "--seed", "1", "--workload", workload],
        env=_env(tmp_path), capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr


def _worker(url: str, name: str, tmp_path, *args: str, **extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*CLI, "worker", "--study", name, "--storage", url, "--quiet", *args],
        env=_env(tmp_path, **extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=ROOT,
    )


def _study(url: str, name: str) -> optuna.Study:
    from search.storage import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(url, heartbeat=False))


def _wait_running(url: str, name: str, worker_pid: int, timeout: float = 180) -> int:
    """Number of a RUNNING trial of the worker with this pid (polls, bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for t in _study(url, name).get_trials(states=(TrialState.RUNNING,)):
            if str(t.user_attrs.get("worker", "")).endswith(f":{worker_pid}"):
                return t.number
        time.sleep(0.05)
    raise AssertionError("the worker never started a trial")


def _finish(p: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    out, err = p.communicate(timeout=timeout)
    return p.returncode, err


def _cleanup(url: str, name: str) -> None:
    try:
        optuna.delete_study(study_name=name, storage=url.replace("postgresql://",
                                                                "postgresql+psycopg://"))
    except Exception:
        pass


@pytest.fixture
def pg(postgres_url, study_name):
    yield postgres_url, study_name
    _cleanup(postgres_url, study_name)


def test_workers_share_one_budget(pg, tmp_path):
    url, name = pg
    _create(url, name, 6, tmp_path)
    procs = [_worker(url, name, tmp_path) for _ in range(2)]
    codes = [_finish(p) for p in procs]
    assert [c for c, _ in codes] == [0, 0], codes
    trials = _study(url, name).get_trials()
    finished = [t for t in trials if t.state.is_finished()]
    assert len(finished) == len(trials) == 6  # exactly the budget: no worker starts a 7th
    assert len({t.number for t in trials}) == len(trials)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    workers = {t.user_attrs.get("worker") for t in finished}
    assert len(workers) == 2, "both workers should have run trials"


def test_sigkilled_worker_trial_is_failed_and_retried(pg, tmp_path):
    url, name = pg
    _create(url, name, 4, tmp_path, space="training")
    trials = sigkill_one_worker_then_finish(url, url, name, tmp_path)
    assert len({t.number for t in trials}) == len(trials)


def sigkill_one_worker_then_finish(worker_url: str, url: str, name: str,
                                   tmp_path) -> list[optuna.trial.FrozenTrial]:
    """SIGKILL a worker (on `worker_url`) mid-trial, let a second one finish the study, and
    check on the database (`url`) that the killed trial is FAIL, retried with its params
    and finished, and nothing is left RUNNING. Returns the study's trials."""
    victim = _worker(worker_url, name, tmp_path)
    killed = _wait_running(url, name, victim.pid)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    time.sleep(4)  # past the grace period (3 s): the killed trial's heartbeat is stale
    survivor = _worker(worker_url, name, tmp_path)
    code, err = _finish(survivor)
    assert code == 0, err
    trials = _study(url, name).get_trials()
    by_number = {t.number: t for t in trials}
    assert by_number[killed].state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    # The retry finishes: COMPLETE, or PRUNED by csearch's early stop.
    assert retries and retries[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert retries[0].params == by_number[killed].params
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    return trials


def test_sigterm_fails_trial_cleanly_and_the_next_worker_reruns_it(pg, tmp_path):
    url, name = pg
    # Evaluations of a second or more: the signal lands mid-evaluation.
    _create(url, name, 3, tmp_path, space="training", workload=SLOW)
    p = _worker(url, name, tmp_path, "--workload", SLOW)
    number = _wait_running(url, name, p.pid)
    p.send_signal(signal.SIGTERM)
    code, err = _finish(p, timeout=120)
    assert code == 0, err
    assert "Traceback" not in err
    trials = _study(url, name).get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    interrupted = {t.number: t for t in trials}[number]
    assert interrupted.state == TrialState.FAIL
    assert "interrupted" in interrupted.user_attrs.get("fail_reason", "")
    assert not [t for t in trials if t.state == TrialState.WAITING]
    # The next worker re-runs it first, with the same params.
    code, err = _finish(_worker(url, name, tmp_path, "--workload", SLOW), timeout=300)
    assert code == 0, err
    trials = _study(url, name).get_trials()
    requeued = [t for t in trials if t.user_attrs.get("retry_of") == number]
    # Finished: COMPLETE, or PRUNED by csearch's early stop (a hopeless recovery).
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    assert len(requeued) == 1 and requeued[0].state in finished
    assert requeued[0].params == interrupted.params
    assert sum(t.state in finished for t in trials) == 3  # the whole budget


def _restart_postgres() -> None:
    versions = os.listdir("/etc/postgresql")
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", versions[0], "main",
                    "restart"], check=True, timeout=120, capture_output=True)


@pytest.mark.skipif(shutil.which("pg_ctlcluster") is None or os.geteuid() != 0,
                    reason="restarting PostgreSQL needs pg_ctlcluster as root")
def test_postgres_restart_mid_study_loses_nothing(pg, tmp_path):
    url, name = pg
    _create(url, name, 8, tmp_path, space="training")
    spool = tmp_path / "spool"
    procs = [_worker(url, name, tmp_path, CSEARCH_SPOOL_DIR=str(spool)) for _ in range(2)]
    _wait_running(url, name, procs[0].pid)
    _restart_postgres()
    codes = [_finish(p) for p in procs]
    assert [c for c, _ in codes] == [0, 0], codes
    trials = _study(url, name).get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    # Finished: COMPLETE, or PRUNED by csearch's early stop (a hopeless recovery).
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) >= 8 - len([t for t in trials if t.state == TrialState.FAIL]), \
        [(t.number, t.state.name) for t in trials]
    # Every evaluated result reached the database: no spooled result is left behind.
    leftovers = list(spool.glob("*/*.json"))
    assert leftovers == []
