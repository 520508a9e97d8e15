"""Ctrl-C during `csearch run`: exit 130, one line saying what really finished (in the
terms of `csearch studies`), no trial left RUNNING or WAITING, and a resume that re-runs
the interrupted trial first and finishes the budget."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from conftest import missing_service

ROOT = Path(__file__).resolve().parents[2]  # the plugin workload imports from here
SLOW = "tests.integration.slow_workload:make_workload"  # each accuracy check takes 1 s


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")


def _run(db: str) -> list[str]:
    return [sys.executable, "-m", "search.cli", "run", "--workload", SLOW, "--space",
            "compression", "--trials", "3", "--study", "s", "--storage", db, "--seed", "1",
            "--quiet"]


def _trials(db: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name="s", storage=db).get_trials()
    except KeyError:  # not created yet
        return []


def _interrupt_mid_trial(cmd: list[str], db: str, after_complete: bool
                         ) -> tuple[int, int, str, str]:
    """Start `cmd`, send SIGINT inside a trial's evaluation (`after_complete`: once a
    trial has finished, so the summary has something to count); (the trial that was
    running, exit status, stdout, stderr)."""
    p = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        running = None
        while running is None and time.monotonic() < deadline and p.poll() is None:
            trials = _trials(db)
            if not after_complete or any(t.state == TrialState.COMPLETE for t in trials):
                running = next((t.number for t in trials if t.state == TrialState.RUNNING
                                and t.user_attrs.get("eval_seed") is not None), None)
            time.sleep(0.1)
        assert running is not None, "no trial was running"
        time.sleep(0.3)  # inside the evaluation (its accuracy check alone takes 1 s)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=180)
    finally:
        if p.poll() is None:
            p.kill()
    return running, p.returncode, out, err


def test_ctrl_c_mid_trial_exits_130_and_leaves_nothing_running_or_waiting(tmp_path: Path):
    db = f"sqlite:///{tmp_path / 'i.db'}"
    running, code, out, err = _interrupt_mid_trial(_run(db), db, after_complete=True)
    assert code == 130, err
    assert "Traceback" not in err, err
    trials = _trials(db)
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    stopped = {t.number: t for t in trials}[running]
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["interrupted"] is True
    done = sum(t.state == TrialState.COMPLETE for t in trials)
    lines = [ln for ln in out.splitlines() if ln.startswith("interrupted (SIGINT)")]
    assert len(lines) == 1, out
    # The line says what `csearch studies` lists.
    r = subprocess.run([sys.executable, "-m", "search.cli", "studies", "--storage", db,
                        "--format", "json"], cwd=ROOT, env=_env(), capture_output=True,
                       text=True, timeout=120)
    row = json.loads(r.stdout)[0]
    states = " ".join(f"{k}={v}" for k, v in sorted(row["states"].items()))
    assert f"{row['trials']} trial(s), {states};" in lines[0], (lines[0], row)
    assert f"{done}/3 of the budget finished" in lines[0]
    assert lines[0].endswith(f"interrupted: trial {running} (re-run first when `csearch run` "
                             "resumes)")

    # Resumed, the interrupted trial runs again first and the budget of 3 is met exactly.
    r = subprocess.run(_run(db), cwd=ROOT, env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    trials = _trials(db)
    retry = [t for t in trials if t.user_attrs.get("retry_of") == running]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].params == stopped.params
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


def test_ctrl_c_under_ray_exits_130_and_fails_the_running_trial_as_interrupted(tmp_path):
    """`csearch run --ray`: Ctrl-C cancels the Ray tasks, and each stops as a local worker
    does (its trial FAIL, marked interrupted, nothing RUNNING or WAITING), then exit 130
    with the same one-line summary."""
    try:
        import ray  # noqa: F401
    except ImportError:
        missing_service("Ray (pip install csearch[ray])")  # fails under .ci/run
    db = f"sqlite:///{tmp_path / 'r.db'}"
    cmd = _run(db)
    cmd[cmd.index("--quiet"):] = ["--ray", "--workers", "1", "--quiet"]
    running, code, out, err = _interrupt_mid_trial(cmd, db, after_complete=False)
    assert code == 130, err
    trials = _trials(db)
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    stopped = {t.number: t for t in trials}[running]
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["interrupted"] is True
    assert [ln for ln in out.splitlines() if ln.startswith("interrupted (SIGINT)")], out
