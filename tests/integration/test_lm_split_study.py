"""Issue 25: a study whose best compressed config breaks the budget only through its
sampled serve split is impossible. The config is re-split, feasible, on the front, and
export, deploy and the tables use the split it was measured with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from objectives.pack import pack_state
from objectives.workloads import allow
from search import attrs
from search.export import export_trial, rebuild_config
from search.results import pareto_rows
from search.runner import MEMORY_CONSTRAINT, run_trials
from search.storage import open_storage
from search.study import build_spec, create_or_resume, load_context
from tests.unit.lm_split_workload import REF, make_workload

# Every trial is the same compressed config: 8-bit weights (about a quarter of the fp32
# bytes), no fine-tuning, and a split far too large for the room those weights leave in
# the budget below (KV pool 60 % and workspace 40 % of it).
SPACE = """
[params."prune.method"]
choices = ["none"]
[params."quant.method"]
choices = ["lowbit"]
[params."quant.bits"]
choices = [8]
[params."quant.group_size"]
choices = [0]
[params."train.epochs"]
choices = [0]
[params."serve.cache_ratio"]
choices = [0.6]
[params."serve.memory_ratio"]
choices = [0.4]
"""


@pytest.fixture(scope="module")
def study_db(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("split")
    (tmp / "split.toml").write_text(SPACE)
    weights = len(pack_state(make_workload().model.state_dict(), {}))
    allow(REF)
    spec = build_spec(workload=REF, space=str(tmp / "split.toml"),
                      objectives=("accuracy:max", "throughput_tps:max"), constraints=(),
                      sampler="random", seed=0, device="cpu", trials=1, timeout=None,
                      memory_budget_mb=0.4 * weights / 1e6, artifacts=str(tmp / "art"))
    url = f"sqlite:///{tmp / 's.db'}"
    ctx = load_context(spec)
    study, _ = create_or_resume(open_storage(url, create=True), "split", spec, ctx)
    run_trials(study, ctx)
    return study, url, tmp


def test_the_split_alone_never_makes_a_config_infeasible(study_db):
    study, _, _ = study_db
    (t,) = study.trials
    assert t.constraints[MEMORY_CONSTRAINT] <= 0
    split = t.user_attrs[attrs.SERVE_SPLIT]
    assert split["sampled"] == {"cache_ratio": 0.6, "memory_ratio": 0.4}
    assert split["cache_ratio"] / split["memory_ratio"] == pytest.approx(1.5)
    budget = study.user_attrs[attrs.BASELINE]["memory_budget_mb"]
    m = t.user_attrs[attrs.METRICS]
    # Compressed weights that fit with room to spare; only the sampled split (the whole
    # budget again) did not.
    assert m["size_mb"] < 0.75 * budget and m["effective_bits"] < 9
    assert m["memory_mb"] <= budget
    assert [r["number"] for r in pareto_rows(study)] == [0]
    # The fp32 baseline's weights alone exceed this budget: no split fits it, none is made.
    base = study.user_attrs[attrs.BASELINE]
    assert base["size_mb"] > base["memory_budget_mb"] and attrs.SERVE_SPLIT not in base


def test_export_and_deploy_use_the_split_that_was_measured(study_db):
    from search.registry import Registry

    study, url, tmp = study_db
    split = study.trials[0].user_attrs[attrs.SERVE_SPLIT]
    meta = export_trial(study, 0, tmp / "out")
    assert meta["serve_split"] == {k: split[k] for k in ("cache_ratio", "memory_ratio")}
    on_disk = json.loads((Path(tmp / "out") / "csearch.json").read_text())
    cfg = rebuild_config(on_disk, make_workload())
    assert (cfg.serve.cache_ratio, cfg.serve.memory_ratio) == (split["cache_ratio"],
                                                               split["memory_ratio"])
    version = Registry(url).deploy(study, 0, "split-lm")
    assert version.serve["cache_ratio"] == split["cache_ratio"]
    assert version.serve["memory_ratio"] == split["memory_ratio"]


def test_tables_show_the_split_used_beside_the_sampled_one(study_db):
    from search.cli import cli

    study, url, _ = study_db
    split = study.trials[0].user_attrs[attrs.SERVE_SPLIT]
    shown = [f"0.6→{split['cache_ratio']:.3g}", f"0.4→{split['memory_ratio']:.3g}"]
    runner = CliRunner()
    args = ["--study", "split", "--storage", url]
    for command in (["trials", "--params"], ["pareto", "--params"], ["show", "--trial", "0"]):
        res = runner.invoke(cli, [*command, *args])
        assert res.exit_code == 0, res.stderr
        assert all(text in res.stdout for text in shown), res.stdout


def test_a_plugin_lm_gets_the_lm_defaults_and_a_budget_with_a_kv_pool(tmp_path):
    """`module:factory` is known to be an LM only once built: a new study of one gets the
    LM space and objectives, and a budget of fp32 weights + KV pool + workspace."""
    from objectives.lm.budget import lm_default_budget
    from search.cli import cli
    from search.spec import LM_DEFAULT_OBJECTIVES, LM_DEFAULT_SPACE, stored_spec
    from search.storage import load_study

    url = f"sqlite:///{tmp_path / 'p.db'}"
    res = CliRunner().invoke(cli, ["run", "--workload", REF, "--trials", "1", "--device",
                                   "cpu", "--study", "p", "--storage", url],
                             env={"CSEARCH_STORAGE": None})
    assert res.exit_code == 0, res.stderr
    study = load_study(open_storage(url, create=False), "p")
    spec = stored_spec(study)
    assert spec.space == LM_DEFAULT_SPACE and spec.objectives == LM_DEFAULT_OBJECTIVES
    budget = lm_default_budget(make_workload())
    assert study.user_attrs[attrs.BASELINE]["memory_budget_mb"] == budget.mb
    assert f"budget {budget.mb:g} MB ({budget.describe()})" in res.output  # at study start
