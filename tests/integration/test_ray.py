"""Ray as the launcher (`csearch run --ray`): without Ray, one line naming the extra; with
Ray (in the `test` extra, so in CI), two workers on a local Ray instance share one
PostgreSQL study's budget."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner
from optuna.trial import TrialState

from conftest import missing_service
from test_workers import CLI, ROOT, _cleanup, _env, _study


def test_run_ray_without_ray_names_the_extra(monkeypatch, tmp_path):
    from search.cli import cli

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    db = tmp_path / "s.db"
    r = CliRunner().invoke(cli, ["run", "--ray", "--workers", "2", "--trials", "2",
                                 "--storage", f"sqlite:///{db}"])
    assert r.exit_code == 2, r.output
    assert "pip install csearch[ray]" in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not db.exists()  # nothing written


def test_gpus_per_worker_without_ray_is_refused(tmp_path):
    from search.cli import cli

    r = CliRunner().invoke(cli, ["run", "--gpus-per-worker", "1", "--storage",
                                 f"sqlite:///{tmp_path / 's.db'}"])
    assert r.exit_code == 2 and "--gpus-per-worker" in r.output


def test_run_ray_two_workers_share_the_budget(postgres_url, study_name, tmp_path):
    try:
        import ray  # noqa: F401
    except ImportError:
        missing_service("Ray (pip install csearch[ray])")  # fails under .ci/run
    url, name = postgres_url, study_name
    try:
        r = subprocess.run(
            [*CLI, "run", "--ray", "--workers", "2", "--workload", "digits-cnn", "--study",
             name, "--storage", url, "--space", "compression", "--trials", "6", "--seed",
             "1", "--quiet"],
            env=_env(tmp_path), capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        trials = _study(url, name).get_trials()
        finished = [t for t in trials if t.state.is_finished()]
        assert 6 <= len(finished) <= 7  # at most workers - 1 over the budget
        assert not [t for t in trials if t.state == TrialState.RUNNING]
        assert len({t.user_attrs["worker"] for t in finished}) == 2
    finally:
        _cleanup(url, name)
