"""Objectives, constraints, the stored study spec and storage URLs (no trials run)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest

from search.errors import SpecError, StorageError, UsageError
from search.metrics import parse_constraint, parse_objective
from search.spec import (DEFAULT_OBJECTIVES, LM_DEFAULT_OBJECTIVES, StudySpec,
                         workload_defaults)
from search.storage import open_storage, redact, resolve_url


# --- objectives and constraints ---------------------------------------------------------

def test_objectives_parse_with_short_and_long_directions():
    assert parse_objective("accuracy:max").direction == "maximize"
    assert parse_objective("latency_ms:minimize").direction == "minimize"
    assert str(parse_objective("size_mb:min")) == "size_mb:min"


@pytest.mark.parametrize("text, needle", [("acc:max", "acc"), ("accuracy:up", "up"),
                                          ("accuracy", "accuracy")])
def test_bad_objectives_are_usage_errors_naming_the_value(text, needle):
    with pytest.raises(UsageError, match=needle):
        parse_objective(text)


def test_constraints_follow_optunas_sign_convention():
    le = parse_constraint("accuracy_drop<=0.01")
    assert le.value({"accuracy_drop": 0.005}) <= 0  # feasible
    assert le.value({"accuracy_drop": 0.02}) > 0
    ge = parse_constraint("accuracy >= 0.9")
    assert ge.value({"accuracy": 0.95}) <= 0
    assert ge.value({"accuracy": 0.85}) > 0
    assert str(le) == "accuracy_drop<=0.01"


@pytest.mark.parametrize("text", ["accuracy_drop=<0.01", "accuracy_drop<=abc",
                                  "bogus<=1", "accuracy<=inf", "accuracy_drop"])
def test_bad_constraints_are_usage_errors(text):
    with pytest.raises(UsageError):
        parse_constraint(text)


# --- spec -------------------------------------------------------------------------------

def _spec(**kw) -> StudySpec:
    args = dict(workload="digits-cnn", space="compression", space_toml="x = 1\n", trials=8)
    args.update(kw)
    return StudySpec(**args)


def test_spec_round_trips_through_a_json_user_attr():
    spec = _spec(constraints=("accuracy_drop<=0.01",), memory_budget_mb=0.5, sampler="nsga2")
    study = optuna.create_study(directions=spec.directions)
    study.set_user_attr("spec", spec.to_dict())
    again = StudySpec.from_dict(optuna.load_study(study_name=study.study_name,
                                                  storage=study._storage).user_attrs["spec"])
    assert again == spec
    assert spec.directions == ["maximize", "minimize", "minimize"]
    assert spec.objectives == DEFAULT_OBJECTIVES
    assert spec.accuracy_guard() == 0.01


def test_a_bare_run_searches_tiny_lm_for_quality_tokens_and_memory(tmp_path):
    """`csearch run` with no options: tiny-lm on the lm-budget space, objectives accuracy,
    tokens/s and serving memory; naming a workload brings its own defaults."""
    from search.cli import cli
    from search.cli.options import make_spec

    run = cli.commands["run"]
    url = f"sqlite:///{tmp_path / 's.db'}"
    bare = make_spec(run.make_context("run", []).params, url)
    assert (bare.workload, bare.space) == ("tiny-lm", "lm-budget")
    assert bare.metric_names == ["accuracy", "throughput_tps", "memory_mb"]
    assert bare.directions == ["maximize", "maximize", "minimize"]
    digits = make_spec(run.make_context("run", ["--workload", "digits-cnn"]).params, url)
    assert (digits.space, digits.objectives) == ("joint", DEFAULT_OBJECTIVES)
    assert workload_defaults("causal-lm:/m?data=/d.txt") == ("lm-budget", LM_DEFAULT_OBJECTIVES)
    assert not list(tmp_path.iterdir())  # building the spec writes nothing


def test_differences_name_identity_fields_but_not_budgets():
    spec = _spec()
    assert spec.differences(dataclasses.replace(spec, trials=99, timeout=5.0,
                                                device="cpu")) == []
    diff = spec.differences(dataclasses.replace(spec, seed=3, sampler="random"))
    assert any(d.startswith("seed") for d in diff)
    assert any(d.startswith("sampler") for d in diff)


@pytest.mark.parametrize("kw", [{"sampler": "annealing"}, {"objectives": ()},
                                {"objectives": ("accuracy:max", "accuracy:min")},
                                {"trials": -1}, {"timeout": 0.0},
                                {"memory_budget_mb": -1.0}])
def test_invalid_specs_are_refused(kw):
    with pytest.raises((SpecError, UsageError)):
        _spec(**kw)


# --- storage URLs -----------------------------------------------------------------------

def test_storage_url_resolution_order(monkeypatch, tmp_path: Path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CSEARCH_STORAGE", raising=False)
    assert resolve_url(None) == f"sqlite:///{tmp_path / 'studies.db'}"
    monkeypatch.setenv("CSEARCH_STORAGE", "sqlite:///env.db")
    assert resolve_url(None) == f"sqlite:///{tmp_path / 'env.db'}"
    assert resolve_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert resolve_url("journal:///j.log") == f"journal:///{tmp_path / 'j.log'}"
    assert resolve_url("sqlite:////abs/x.db") == "sqlite:////abs/x.db"


def test_redact_hides_passwords():
    assert redact("postgresql://me:hunter2@db:5432/x") == "postgresql://me:***@db:5432/x"
    assert "hunter2" not in redact("mysql+pymysql://root:hunter2@127.0.0.1/test")
    assert redact("sqlite:///x.db") == "sqlite:///x.db"


def test_opening_a_missing_file_read_only_creates_nothing(tmp_path: Path):
    for url in (f"sqlite:///{tmp_path / 'a.db'}", f"journal:///{tmp_path / 'a.log'}"):
        with pytest.raises(StorageError):
            open_storage(url, create=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(StorageError, match="redis"):
        open_storage("redis://localhost/0")
    with pytest.raises(StorageError, match="does not exist"):
        open_storage(f"sqlite:///{tmp_path / 'no' / 'dir.db'}", create=True)
