"""One worker per GPU: the GPU list, round-robin placement, and what trials record.

The machine running the tests has no GPU; the GPU list is injected through
CSEARCH_VISIBLE_GPUS (read only when torch sees no GPU), so workers are placed exactly
as on a GPU machine and still evaluate on the CPU.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter

from search.placement import claim_gpu, gpu_for, visible_gpus, wants_gpu

from test_workers import CLI, ROOT, SLOW, _cleanup, _env, _study


def test_visible_gpus_from_torch_count_or_injected_list():
    assert visible_gpus({}, count=2) == ["0", "1"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "3,5"}, count=2) == ["3", "5"]
    # The injected list is for machines where torch sees no GPU, never over real ones.
    assert visible_gpus({"CSEARCH_VISIBLE_GPUS": "0,1"}, count=0) == ["0", "1"]
    assert visible_gpus({"CSEARCH_VISIBLE_GPUS": "0,1"}, count=1) == ["0"]
    assert visible_gpus({}, count=0) == []


def test_round_robin_and_what_is_placed():
    assert [gpu_for(i, ["0", "1"]) for i in range(4)] == ["0", "1", "0", "1"]
    assert gpu_for(3, []) is None
    assert wants_gpu("auto") and wants_gpu("cuda") and wants_gpu(None)
    assert not wants_gpu("cpu") and not wants_gpu("cuda:1")


def test_workers_started_on_their_own_claim_gpus_round_robin(tmp_path):
    # Each claim holds its lock file open, as a worker process does for its lifetime.
    got = [claim_gpu(["0", "1"], tmp_path) for _ in range(5)]
    assert got == ["0", "1", "0", "1", "0"]
    assert claim_gpu([], tmp_path) is None


def test_run_workers_4_on_injected_gpus_0_1(postgres_url, study_name, tmp_path):
    url, name = postgres_url, study_name
    env = _env(tmp_path, CSEARCH_VISIBLE_GPUS="0,1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    try:
        r = subprocess.run(
            [*CLI, "run", "--study", name, "--storage", url, "--space", "training",
             "--workload", SLOW, "--trials", "12", "--seed", "1", "--workers", "4", "--quiet"],
            env=env, capture_output=True, text=True, timeout=600, cwd=ROOT,
        )
        assert r.returncode == 0, r.stderr
        trials = _study(url, name).get_trials()
        ran = [t for t in trials if t.state.is_finished()]
        gpu_of: dict[str, set[str]] = {}
        for t in ran:
            assert t.user_attrs["device"] == "cpu"  # no real GPU: placed, run on the CPU
            gpu_of.setdefault(t.user_attrs["worker"], set()).add(t.user_attrs["gpu"])
        assert all(len(g) == 1 for g in gpu_of.values()), gpu_of  # a worker stays put
        per_gpu = Counter(next(iter(g)) for g in gpu_of.values())
        assert len(gpu_of) == 4, f"every worker should have run a trial: {gpu_of}"
        assert per_gpu == {"0": 2, "1": 2}, per_gpu
        out = subprocess.run([*CLI, "trials", "--study", name, "--storage", url],
                             env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        header = out.stdout.splitlines()[0]
        assert "device" in header
        assert "gpu 0" in out.stdout and "gpu 1" in out.stdout
        assert max(len(line) for line in out.stdout.splitlines()) <= 120
        rows = json.loads(subprocess.run(
            [*CLI, "trials", "--study", name, "--storage", url, "--format", "json"],
            env=env, capture_output=True, text=True, timeout=120, cwd=ROOT).stdout)
        assert {r["gpu"] for r in rows if r["state"] != "WAITING"} == {"0", "1"}
    finally:
        _cleanup(url, name)


def test_settle_fails_a_dead_workers_trial_left_running(tmp_path):
    """What `run --workers/--ray` does once its workers have exited: a trial left RUNNING
    by a killed worker is failed when its heartbeat is stale, and re-queued."""
    import optuna
    from optuna.trial import TrialState

    from search._optuna import trial_id_of, unwrap_storage
    from search.storage import open_storage
    from search.workers import settle

    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", create=True)
    study = optuna.create_study(storage=storage, study_name="s")
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    storage.record_heartbeat(trial_id_of(trial))  # then the worker dies
    unwrap_storage(storage).grace_period = 1
    assert settle(study, wait_s=0) == 1  # not stale yet, no waiting asked for
    assert settle(study, wait_s=20) == 0
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.WAITING], states  # failed and re-queued
