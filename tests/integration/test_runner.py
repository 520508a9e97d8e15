"""How trials end up in the study: rejected configs, early stops, plugin workloads."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from objectives import METRICS
from search.results import pareto_rows, trial_rows
from search.runner import MEMORY_CONSTRAINT, run_trials
from search.study import build_spec, create_or_resume, load_context


def _spec(space: str, **kw):
    args = dict(workload="digits-cnn", space=space, objectives=("accuracy:max", "size_mb:min"),
                constraints=(), sampler="random", seed=0, device="cpu", trials=2,
                timeout=None, memory_budget_mb=None, artifacts=None)
    args.update(kw)
    return build_spec(**args)


def _run(spec):
    ctx = load_context(spec)
    study, _ = create_or_resume(optuna.storages.InMemoryStorage(), "s", spec, ctx)
    run_trials(study, ctx)
    return study


def test_weights_over_the_budget_give_complete_infeasible_trials():
    study = _run(_spec("serving", memory_budget_mb=0.5))  # fp32 weights: 0.56 MB
    assert len(study.trials) == 2
    for t in study.trials:
        assert t.state == TrialState.COMPLETE  # never FAIL: samplers learn the boundary
        assert t.constraints[MEMORY_CONSTRAINT] > 0
        m = t.user_attrs["metrics"]
        assert set(METRICS) <= set(m) and all(math.isfinite(m[k]) for k in METRICS)
        assert m["rejected_early"] == 1
        assert "rejected" in t.user_attrs
    assert [r["feasible"] for r in trial_rows(study)] == [False, False]
    assert pareto_rows(study) == []  # infeasible trials are never on the front


def _hopeless(tmp_path: Path, recovery: str, length: int) -> optuna.Study:
    """One trial pruned far past the 1-point guard, with `length` epochs or steps of
    recovery (`recovery`: `train.epochs` or `train.steps`)."""
    space = tmp_path / "hopeless.toml"
    space.write_text(
        '[params."prune.method"]\nchoices = ["magnitude"]\n'
        '[params."prune.threshold"]\ntype = "float"\nlow = 0.5\nhigh = 0.6\n'
        f'[params."{recovery}"]\ntype = "int"\nlow = {length}\nhigh = {length}\n')
    return _run(_spec(str(space), constraints=("accuracy_drop<=0.01",), trials=1))


def test_hopeless_trial_is_pruned_with_its_reason(tmp_path: Path):
    study = _hopeless(tmp_path, "train.epochs", 3)
    (t,) = study.trials
    assert t.state == TrialState.PRUNED
    assert "guard" in t.user_attrs["pruned_reason"]
    assert t.user_attrs["partial_metrics"]["accuracy_drop"] > 0.2
    (row,) = trial_rows(study)
    assert row["state"] == "PRUNED" and "guard" in row["reason"]


def test_recovery_in_steps_stops_early_and_the_report_counts_the_time_saved(tmp_path: Path):
    from search.report import collect_context

    study = _hopeless(tmp_path, "train.steps", 8)
    (t,) = study.trials
    assert t.state == TrialState.PRUNED
    stop = t.user_attrs["early_stop"]
    assert (stop["rule"], stop["step"], stop["steps"]) == ("guard", 3, 8)
    assert stop["seconds_saved"] > 0
    ctx = collect_context(study)
    assert ctx.n_early_stopped == 1 and ctx.seconds_saved == stop["seconds_saved"]
    assert ctx.early_stop_line().startswith("1 trial(s) stopped early")
    start = study.user_attrs["start_seconds"]
    assert start["load"] >= 0 and start["baseline"] > 0


PLUGIN = '''
import torch
import torch.nn.functional as F
from torch import nn
from objectives import Workload


def make_workload():
    from sklearn.datasets import load_wine
    from sklearn.model_selection import train_test_split

    d = load_wine()
    x = torch.tensor(d.data, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0)
    y = torch.tensor(d.target)
    tr, te = train_test_split(list(range(len(y))), test_size=0.3, random_state=0,
                              stratify=d.target)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(13, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                          nn.Linear(32, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(x[tr]), y[tr]).backward()
        opt.step()
    model.eval()

    @torch.inference_mode()
    def evaluate(m):
        m.eval()
        return float((m(x[te]).argmax(1) == y[te]).float().mean())

    return Workload(name="wine-mlp", model=model, evaluate=evaluate, request_inputs=x,
                    train_batches=lambda: [(x[tr], y[tr])], n_requests=300)
'''


def test_plugin_workload_exports_and_reloads_to_its_accuracy(tmp_path: Path):
    from search.cli import cli
    from search.export import load

    (tmp_path / "wineplug.py").write_text(PLUGIN)
    url = f"sqlite:///{tmp_path / 'w.db'}"
    old = os.getcwd()
    os.chdir(tmp_path)  # like `flask --app`, module:factory resolves in the cwd
    try:
        runner = CliRunner()
        args = ["--study", "w", "--storage", url]
        result = runner.invoke(cli, ["run", *args, "--workload", "wineplug:make_workload",
                                     "--space", "compression", "--trials", "3", "--device",
                                     "cpu", "--seed", "1"], env={"CSEARCH_STORAGE": None})
        assert result.exit_code == 0, result.stderr
        rows = json.loads(runner.invoke(cli, ["trials", *args, "--format", "json"]).stdout)
        complete = [r for r in rows if r["state"] == "COMPLETE"]
        assert complete
        from objectives import load_workload

        workload = load_workload("wineplug:make_workload")
        for r in complete:
            out = tmp_path / f"export-{r['number']}"
            res = runner.invoke(cli, ["export", *args, "--trial", str(r["number"]),
                                      "-o", str(out)])
            assert res.exit_code == 0, res.stderr
            assert (out / "model.safetensors").stat().st_size == pytest.approx(
                r["metrics"]["size_mb"] * 1e6, rel=0.02)
            model = load(out)
            assert workload.evaluate(model) == pytest.approx(r["metrics"]["accuracy"],
                                                             abs=0.01)
    finally:
        os.chdir(old)
        sys.modules.pop("wineplug", None)


def test_a_nan_constraint_fails_the_trial_but_keeps_its_metrics(tmp_path: Path, monkeypatch):
    """As with one `trial.set_constraint` per value: NaN is refused, and the metrics
    written before it stay on the (failed) trial."""
    import dataclasses

    from objectives import evaluate
    from search import runner
    from search.storage import open_storage
    from search.study import baseline_config

    spec = _spec("serving", trials=1)
    ctx = load_context(spec)
    real = evaluate(ctx.workload, baseline_config(), budget_mb=ctx.budget_mb, seed=0)
    broken = dataclasses.replace(real, memory_margin_mb=float("nan"))
    monkeypatch.setattr(runner, "evaluate", lambda *a, **k: broken)
    storage = open_storage(f"sqlite:///{tmp_path / 'nan.db'}", create=True)
    study, _ = create_or_resume(storage, "s", spec, ctx)
    run_trials(study, ctx)
    (t,) = study.trials
    assert t.state == TrialState.FAIL
    assert t.user_attrs["metrics"] == real.metrics
    assert MEMORY_CONSTRAINT not in t.constraints


def test_an_interrupt_python_dropped_is_raised_at_the_next_stage():
    """A signal's Interrupted that lands in a weakref callback is dropped by Python; the
    worker's handler also leaves it on the objective, and the trial's next stage raises
    it, so the trial still fails as interrupted instead of running on."""
    from search.runner import Interrupted, TrialObjective

    spec = _spec("training", trials=1)
    ctx = load_context(spec)
    study, _ = create_or_resume(optuna.storages.InMemoryStorage(), "s", spec, ctx)
    objective = TrialObjective(ctx)
    objective.interrupt = "worker received SIGTERM"
    with pytest.raises(Interrupted):
        study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["fail_reason"] == "interrupted: worker received SIGTERM"
    assert "metrics" not in trial.user_attrs


def test_server_overhead_reaches_every_request_and_the_environment(monkeypatch):
    from search import study as study_mod
    from search.spec import BASELINE_ATTR, ENV_ATTR

    monkeypatch.setattr(study_mod, "_serve_overhead_ms", lambda workload, device, ref: 2.0)
    spec = _spec("serving", objectives=("accuracy:max", "latency_mean_ms:min"), trials=1)
    ctx = load_context(spec)
    assert ctx.serve_overhead_ms == 2.0
    study, _ = create_or_resume(optuna.storages.InMemoryStorage(), "s", spec, ctx)
    assert study.user_attrs[ENV_ATTR]["serve_overhead_ms"] == 2.0
    run_trials(study, ctx)
    (t,) = study.trials
    for m in (study.user_attrs[BASELINE_ATTR], t.user_attrs["metrics"]):
        assert min(m["latency_ms"], m["latency_mean_ms"], m["latency_p99_ms"]) >= 2.0
        assert m["baseline_model_latency_ms"] > 0 and m["speedup"] > 0
