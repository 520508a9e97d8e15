"""The report's collected data (not the drawing), the HTML page, the CLI command and the
progress output. Studies are built from hand-made trials, so no model is trained."""

from __future__ import annotations

import io
import re
import shlex
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
from click.testing import CliRunner
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from search import report as R
from search.results import pareto_rows
from search.spec import BASELINE_ATTR, ENV_ATTR, SPEC_ATTR, StudySpec

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/
from benchmarks.report_large import fill_study  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

DIRS = ["maximize", "minimize", "minimize"]
NAMES = ["accuracy", "latency_ms", "size_mb"]
T0 = datetime(2026, 1, 1, 12)


def _trial(number, values=None, feasible=True, state=TrialState.COMPLETE, worker="h:1",
           beta=0.2, gamma=0.1, method="magnitude", seeded=None):
    params = {"prune.method": method, "serve.cache_ratio": beta, "serve.memory_ratio": gamma}
    dists = {"prune.method": CategoricalDistribution(["none", "magnitude"]),
             "serve.cache_ratio": FloatDistribution(0.0, 0.6),
             "serve.memory_ratio": FloatDistribution(0.02, 0.4)}
    system, user = {}, {"worker": worker}
    if seeded is not None:
        user["seeded"] = seeded
    if state == TrialState.COMPLETE:
        margin = -0.1 if feasible else 0.2
        system = {"constraints:memory_budget": margin, "constraints": [margin]}
        user["metrics"] = {"accuracy": values[0], "latency_ms": values[1], "size_mb": values[2],
                           "cache_hit_rate": beta * 1.5, "throughput_rps": 1000 + 5000 * gamma,
                           "accuracy_drop": 0.99 - values[0], "memory_mb": 0.9 + margin}
    t = create_trial(state=state, params=params, distributions=dists, values=values,
                     user_attrs=user, system_attrs=system)
    t.datetime_start = T0 + timedelta(seconds=10 * number)
    t.datetime_complete = t.datetime_start + timedelta(seconds=3)
    return t


@pytest.fixture
def hand_study():
    """Seven trials with a known feasible front {1, 6}; trial 2 dominates all but is
    infeasible; 3 is dominated; 4 pruned; 5 failed."""
    study = optuna.create_study(directions=DIRS, study_name="hand")
    study.set_metric_names(NAMES)
    spec = StudySpec(workload="digits-cnn", space="joint", space_toml="", trials=7)
    study.set_user_attr(SPEC_ATTR, spec.to_dict())
    study.set_user_attr(BASELINE_ATTR, {"accuracy": 0.99, "size_mb": 0.5, "latency_ms": 3.0})
    study.set_user_attr(ENV_ATTR, {"device": "cpu", "torch": "2.13.0+cpu", "threads": 2})
    study.add_trials([
        _trial(0, [0.99, 2.0, 0.5], worker="h:1", beta=0.1),
        _trial(1, [0.98, 1.0, 0.4], worker="h:2", beta=0.3, method="none"),
        _trial(2, [0.999, 0.5, 0.1], feasible=False, worker="h:1", beta=0.5),
        _trial(3, [0.97, 3.0, 0.6], worker="h:2"),
        _trial(4, state=TrialState.PRUNED, worker="h:1"),
        _trial(5, state=TrialState.FAIL, worker="h:2"),
        _trial(6, [0.995, 1.5, 0.45], worker="h:1", beta=0.2, method="none"),
    ])
    return study


@pytest.fixture(scope="module")
def synthetic_study():
    return fill_study(optuna.storages.InMemoryStorage(), "synthetic", 60, seed=1,
                      n_pruned=3, n_failed=2)


def test_pareto_points_and_infeasible_flag(hand_study):
    d = R.collect_pareto(hand_study)
    assert d.names == NAMES and d.directions == DIRS
    assert d.numbers == [0, 1, 2, 3, 6]  # complete trials only
    assert dict(zip(d.numbers, d.feasible)) == {0: True, 1: True, 2: False, 3: True, 6: True}
    assert d.front_numbers() == [1, 6]
    assert not d.on_front[d.numbers.index(2)]  # dominates everything, but infeasible
    assert d.front_numbers() == sorted(t.number for t in hand_study.best_trials)
    assert d.values[d.numbers.index(6)] == [0.995, 1.5, 0.45]


def test_pareto_marks_seeded_trials():
    """Seeded (enqueued) trials are flagged, on the data and on every Pareto figure, so a
    reader sees which front trials the search found itself."""
    study = optuna.create_study(directions=DIRS)
    study.set_metric_names(NAMES)
    study.add_trials([
        _trial(0, [0.99, 0.5, 0.5], seeded="sensitivity"),  # on the front, seeded
        _trial(1, [0.98, 1.0, 0.4], seeded=True),  # on the front, seeded
        _trial(2, [0.97, 3.0, 0.6]),  # dominated, the search's
        _trial(3, [0.995, 1.5, 0.45]),  # on the front, the search's
        _trial(4, [0.96, 3.5, 0.7], seeded=True),  # dominated, seeded
    ])
    d = R.collect_pareto(study)
    assert d.seeded == [True, True, False, False, True]
    assert d.front_numbers() == [0, 1, 3]
    assert d.front_from_search() == [3]
    fig2d, fig3d = R.plot_pareto(d)
    marks = [t for t in fig2d.data if t.name == "Seeded (enqueued)"]
    assert len(marks) == 3  # one per pair of objectives
    assert sorted(marks[0].customdata.tolist()) == [0, 1, 4]
    assert "1 of 3 front trials found by the search" in fig2d.layout.title.text
    marks3 = [t for t in fig3d.data if t.name == "Seeded (enqueued)"]
    assert len(marks3) == 1 and sorted(marks3[0].customdata.tolist()) == [0, 1, 4]


def test_pareto_without_seeds_has_no_seed_marks(hand_study):
    d = R.collect_pareto(hand_study)
    assert d.seeded == [False] * 5 and d.front_from_search() == [1, 6]
    assert not [t for t in R.plot_pareto(d)[0].data if t.name == "Seeded (enqueued)"]


def test_pareto_front_matches_optuna_on_a_larger_study(synthetic_study):
    d = R.collect_pareto(synthetic_study)
    assert d.front_numbers() == [r["number"] for r in pareto_rows(synthetic_study)]
    assert not any(f and not ok for f, ok in zip(d.on_front, d.feasible))
    assert not all(d.feasible)  # the synthetic study has infeasible trials to grey out


def test_hypervolume_history(hand_study, synthetic_study):
    h = R.collect_hypervolume(hand_study)
    assert h.numbers == [0, 1, 2, 3, 6]
    hv = dict(zip(h.numbers, h.hypervolume))
    assert hv[0] > 0
    assert hv[1] > hv[0]  # 1 is not dominated by 0: the volume grows
    assert hv[2] == hv[1]  # infeasible: no change
    assert hv[3] == hv[2]  # dominated: no change
    assert hv[6] > hv[3]
    assert all(0 < v <= 1 for v in h.hypervolume)
    # The reference point is worse than every feasible value in every objective.
    feas = [t for t in hand_study.trials if t.state == TrialState.COMPLETE
            and t.number != 2]
    for i, d in enumerate(DIRS):
        worst = (min if d == "maximize" else max)(t.values[i] for t in feas)
        assert (h.reference_point[i] < worst) if d == "maximize" else (h.reference_point[i] > worst)
    big = R.collect_hypervolume(synthetic_study).hypervolume
    assert np.all(np.diff(big) >= -1e-12) and big[-1] > 0


def test_hypervolume_two_objectives_equals_the_area():
    # Minimise both, reference derived from the data: worst (3, 3) + 10% of range (2) = 3.2.
    study = optuna.create_study(directions=["minimize", "minimize"])
    for v in ([1.0, 3.0], [3.0, 1.0], [2.0, 2.0]):
        study.add_trial(create_trial(values=v))
    h = R.collect_hypervolume(study)
    assert h.reference_point == pytest.approx([3.2, 3.2])
    # Union of boxes to (3.2, 3.2): 2.2*0.2 + 1.2*1.2 + 0.2*2.2 - overlaps, normalised by 2.2².
    area = 0.0
    xs = [1.0, 2.0, 3.0, 3.2]
    heights = [3.2 - 3.0, 3.2 - 2.0, 3.2 - 1.0]
    for (a, b), ht in zip(zip(xs, xs[1:]), heights):
        area += (b - a) * ht
    assert h.hypervolume[-1] == pytest.approx(area / 2.2 ** 2)


def test_importances_keys_and_too_few_trials(hand_study, synthetic_study):
    d = R.collect_importances(synthetic_study)
    assert set(d.importances) | set(d.skipped) == set(synthetic_study.metric_names)
    assert d.importances, d.skipped
    params = set().union(*(t.params for t in synthetic_study.trials))
    for imp in d.importances.values():
        assert set(imp) <= params and imp
        assert sum(imp.values()) == pytest.approx(1.0, abs=1e-6)
    one = optuna.create_study(directions=DIRS)
    one.set_metric_names(NAMES)
    one.add_trial(_trial(0, [0.9, 1.0, 1.0]))
    few = R.collect_importances(one)
    assert few.importances == {} and set(few.skipped) == set(NAMES)


def test_parallel_timeline_serving(hand_study):
    p = R.collect_parallel(hand_study)
    labels = [c["label"] for c in p.columns]
    assert labels[-3:] == NAMES and "prune.method" in labels
    cat = p.columns[labels.index("prune.method")]
    assert cat["ticktext"] == ["magnitude", "none"]
    assert all(len(c["values"]) == len(p.numbers) == 5 for c in p.columns)
    t = R.collect_timeline(hand_study)
    assert sorted(set(t.workers)) == ["h:1", "h:2"]
    assert dict(zip(t.numbers, t.status))[2] == "INFEASIBLE"
    assert {"PRUNED", "FAIL", "COMPLETE"} <= set(t.status)
    assert all(s == pytest.approx(3.0) for s in t.seconds)
    s = R.collect_serving(hand_study)
    assert s.numbers == [0, 1, 2, 3, 6]
    assert s.cache_hit_rate == pytest.approx([b * 1.5 for b in s.cache_ratio])
    assert s.feasible == [True, True, False, True, True]


def test_serving_is_server_bound_when_every_replay_was_busier_in_the_front_end(
        hand_study):
    """The note reads each replay's own queueing figures (which stage was busier), not a
    threshold on throughput against the cap, so a noisy throughput cannot drop it."""
    s = R.collect_serving(hand_study)
    assert not s.server_bound  # no overhead stored, no figures
    env = hand_study.user_attrs[ENV_ATTR]
    hand_study.set_user_attr(ENV_ATTR, {**env, "serve_overhead_ms": 2.0})
    assert not R.collect_serving(hand_study).server_bound  # trials from before the figures

    def with_shares(front: float, model: float, throughput: float) -> optuna.Study:
        study = optuna.create_study(directions=DIRS, study_name="shares")
        study.set_metric_names(NAMES)
        for k, v in hand_study.user_attrs.items():
            study.set_user_attr(k, v)
        for t in hand_study.get_trials():
            if "metrics" in t.user_attrs:
                t.user_attrs["metrics"].update(frontend_busy_share=front,
                                               model_busy_share=model,
                                               throughput_rps=throughput)
            study.add_trial(t)
        return study

    # Far below the 500 req/s cap (noise): still server-bound, by the replay's own figures.
    study = with_shares(0.95, 0.05, 300.0)
    assert R.collect_serving(study).server_bound
    assert "Server-bound" in R.render_html(R.build_report(study))
    study = with_shares(0.4, 0.9, 499.0)  # the model is the bottleneck
    assert not R.collect_serving(study).server_bound
    assert "Server-bound" not in R.render_html(R.build_report(study))


def test_table_rows_with_export_commands(hand_study):
    from search.cli.outputs import export

    url = "postgresql://alice:s3cret@db.example:5432/studies"
    t = R.collect_pareto_table(hand_study, storage_url=url)
    assert [r["number"] for r in t.rows] == [1, 6]
    assert t.columns[: 4] == ["number", *NAMES] and t.columns[-1] == "export"
    row = t.rows[1]
    assert row["accuracy"] == 0.995 and row["smaller"] == pytest.approx(0.5 / 0.45)
    for r in t.rows:
        assert "s3cret" not in r["export"]
        args = shlex.split(r["export"])
        assert args[:2] == ["csearch", "export"]
        ctx = export.make_context("export", args[2:])  # click accepts the command
        assert ctx.params["number"] == r["number"] and ctx.params["study_name"] == "hand"
        assert ctx.params["storage"] == "postgresql://alice:***@db.example:5432/studies"


def test_table_shows_the_parameters_that_have_an_effect_as_the_cli_does():
    """A stored `quant.bits` means nothing to int8 weights, a `serve.batch_size` equal to
    the default changes nothing: the report, like `csearch pareto`, leaves both out and
    shows the split a re-split trial was measured with."""
    study = optuna.create_study(directions=DIRS, study_name="eff")
    study.set_metric_names(NAMES)
    params = {"quant.method": "int8_dynamic", "quant.bits": 4, "serve.batch_size": 32,
              "serve.cache_ratio": 0.5}
    dists = {"quant.method": CategoricalDistribution(["int8_dynamic", "lowbit"]),
             "quant.bits": CategoricalDistribution([2, 4, 8]),
             "serve.batch_size": CategoricalDistribution([8, 32]),
             "serve.cache_ratio": FloatDistribution(0.0, 0.6)}
    study.add_trial(create_trial(
        state=TrialState.COMPLETE, params=params, distributions=dists, values=[0.9, 1.0, 0.2],
        user_attrs={"metrics": {"accuracy": 0.9, "latency_ms": 1.0, "size_mb": 0.2},
                    "serve_split": {"cache_ratio": 0.25, "memory_ratio": 0.1, "sampled": {
                        "cache_ratio": 0.5, "memory_ratio": 0.25}}},
        system_attrs={"constraints": [-1.0]}))
    (row,) = R.collect_pareto_table(study).rows
    assert row["params"] == {"quant.method": "int8_dynamic",
                             "serve.cache_ratio": "0.5→0.25", "serve.memory_ratio": "0.25→0.1"}


def test_report_html_self_contained(hand_study, tmp_path):
    out = tmp_path / "r.html"
    rep = R.write_report(hand_study, out, storage_url="sqlite:///x.db")
    page = out.read_text()
    divs = re.findall(r'<div id="(fig-[\w-]+)" class="plotly-graph-div"', page)
    assert len(divs) >= 4 and "fig-pareto-0" in divs and "fig-pareto-1" in divs  # 2D + 3D
    assert "fig-hypervolume" in divs and "fig-parallel" in divs and "fig-timeline" in divs
    assert page.count("Plotly.newPlot") == len(divs)
    # No script, stylesheet or image from anywhere: everything inline.
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.I)
    assert not re.search(r"<link[^>]*\bhref\s*=", page, re.I)
    assert not re.search(r"<img[^>]*\bsrc\s*=\s*[\"']?https?:", page, re.I)
    assert 'id="pareto-table"' in page and "csearch export --study hand" in page
    assert "2.13.0+cpu" in page  # environment
    assert rep.table.rows and set(rep.timings) >= {"load", "pareto", "render"}


def test_report_empty_study(tmp_path):
    study = optuna.create_study(directions=DIRS)
    study.set_metric_names(NAMES)
    rep = R.write_report(study, tmp_path / "e.html")
    assert rep.pareto.numbers == [] and rep.table.rows == []
    assert "no complete trials yet" in (tmp_path / "e.html").read_text()


def test_report_cli(tmp_path):
    from search.cli import cli

    url = f"sqlite:///{tmp_path}/s.db"
    fill_study(url, "big", 40, n_pruned=2)
    out = tmp_path / "report.html"
    t = time.perf_counter()
    res = CliRunner().invoke(cli, ["report", "--study", "big", "--storage", url,
                                   "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert time.perf_counter() - t < 60
    assert "on the Pareto front" in res.output and out.stat().st_size > 1e6
    res = CliRunner().invoke(cli, ["report", "--study", "nope", "--storage", url,
                                   "-o", str(tmp_path / "x.html")])
    assert res.exit_code == 2 and "no study named 'nope'" in res.output
    assert not (tmp_path / "x.html").exists()


# --- progress ---------------------------------------------------------------------------

def _progress(mode="lines", trials=10):
    from search.cli.progress import Progress as _Progress

    spec = SimpleNamespace(metric_names=NAMES, directions=DIRS, trials=trials)
    clock = iter(range(0, 1000, 2))  # 2 "seconds" between calls
    buf = io.StringIO()
    p = _Progress(mode, stream=buf, err=buf, clock=lambda: float(next(clock)))
    return p.start(spec, None), buf


def test_progress_lines(hand_study):
    p, buf = _progress()
    for t in hand_study.trials:
        p(hand_study, t)
    p(hand_study, hand_study.trials[0])  # a trial seen twice counts once
    p.close()
    trial_lines = buf.getvalue().splitlines()
    assert len(trial_lines) == 7
    assert re.match(r"trial +2 COMPLETE +INFEASIBLE +accuracy=0.999 latency_ms=0.5 size_mb=0.1 "
                    r".*3.00s +breaks memory_budget \(memory_mb=1.1, 0.2 MB over\)  "
                    r"\[3/10 eta \d+s\]$", trial_lines[2])
    assert "feasible" in trial_lines[0] and "PRUNED" in trial_lines[4]
    # Best feasible values: trial 2 (infeasible) is not among them.
    assert "best accuracy=0.995 latency_ms=1 size_mb=0.4" in p.status()
    assert re.search(r"7/10 eta \d+s", p.status())  # 3 left at 2 s per trial
    assert p.done == 7 and p.ran == 7


def test_progress_quiet_prints_nothing(hand_study):
    p, buf = _progress("quiet")
    for t in hand_study.trials:
        p(hand_study, t)
    p.close()
    assert buf.getvalue() == "" and p.done == 7


def test_progress_counts_existing_trials_and_polls(hand_study):
    from search.cli.progress import Progress as _Progress

    spec = SimpleNamespace(metric_names=NAMES, directions=DIRS, trials=9)
    buf = io.StringIO()
    p = _Progress("lines", stream=buf).start(spec, hand_study)
    assert p.done == 7 and p.best["accuracy"] == 0.995  # resumed: 7 finished before
    hand_study.add_trial(_trial(7, [0.996, 0.9, 0.3]))
    poller = p.poll_in_background(hand_study, every=0.05)
    deadline = time.monotonic() + 10
    while p.done < 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    poller.stop()
    p.close()
    assert p.done == 8 and "trial    7 COMPLETE" in buf.getvalue() and "8/9" in buf.getvalue()


def test_worker_logs_trial_lines_when_stdout_is_not_a_terminal(tmp_path, monkeypatch):
    """Under CliRunner stdout is not a tty: a log gets one line per finished trial, not a
    bar (and nothing with --quiet)."""
    import search.cli.lifecycle as cli_mod

    made = []

    class Spy(cli_mod._Progress):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

    monkeypatch.setattr(cli_mod, "_Progress", Spy)
    url = f"sqlite:///{tmp_path}/w.db"
    fill_study(url, "w", 3)
    res = CliRunner().invoke(cli_mod.cli, ["worker", "--study", "w", "--storage", url])
    assert res.exit_code == 0, res.output
    assert made and made[0].mode == "lines"
    res = CliRunner().invoke(cli_mod.cli, ["worker", "--study", "w", "--storage", url, "-q"])
    assert res.exit_code == 0, res.output
    assert made[-1].mode == "quiet" and "trial " not in res.output


def test_served_against_predicted(hand_study, tmp_path):
    """Only complete trials with a `served` measurement appear, each figure beside the
    replay's own for the same trial; the page draws them."""
    assert R.collect_served(hand_study).numbers == []
    t = _trial(7, [0.99, 1.5, 0.45])
    t.user_attrs["metrics"].update(latency_mean_ms=1.8, latency_p99_ms=4.0)
    t.user_attrs["served"] = {"mean_ms": 2.5, "p50_ms": 1.1, "p99_ms": 9.0,
                              "throughput_rps": 800.0, "errors": 0, "requests": 100,
                              "url": "http://127.0.0.1:8000"}
    hand_study.add_trial(t)
    d = R.collect_served(hand_study)
    assert d.numbers == [7]
    assert d.predicted["mean"] == [1.8] and d.served["mean"] == [2.5]
    assert d.predicted["p50"] == [1.5] and d.served["p99"] == [9.0]
    assert d.predicted_rps == [t.user_attrs["metrics"]["throughput_rps"]]
    assert d.errors == [0] and d.urls == ["http://127.0.0.1:8000"]
    out = tmp_path / "r.html"
    R.write_report(hand_study, out)
    assert 'id="fig-served"' in out.read_text()


def test_served_against_predicted_tokens_and_ttft_of_a_language_model(hand_study):
    """An LM trial's loadtest (tokens/s, TTFT, TPOT) is set beside its replay's."""
    t = _trial(8, [0.5, 2.0, 1.6])
    t.user_attrs["metrics"].update(ttft_ms=40.0, tpot_ms=9.0, latency_ms=180.0,
                                   throughput_tps=350.0)
    t.user_attrs["served"] = {"mean_ms": 210.0, "p50_ms": 200.0, "p99_ms": 300.0,
                              "ttft_p50_ms": 55.0, "tpot_p50_ms": 10.5,
                              "throughput_tps": 300.0, "throughput_rps": 18.0, "errors": 0,
                              "requests": 64, "url": "http://127.0.0.1:8000"}
    hand_study.add_trial(t)
    d = R.collect_served(hand_study)
    assert d.rate == "tokens/s" and d.numbers == [hand_study.trials[-1].number]
    i = 0
    assert d.predicted["TTFT p50"][i] == 40.0 and d.served["TTFT p50"][i] == 55.0
    assert d.predicted["TPOT p50"][i] == 9.0 and d.served["TPOT p50"][i] == 10.5
    assert d.predicted_rps[i] == 350.0 and d.served_rps[i] == 300.0
    fig = R.plot_served(d)
    assert {tr.name for tr in fig.data} >= {"TTFT p50", "TPOT p50", "tokens/s"}


def test_memory_split_of_an_lm_studys_pareto_trials(hand_study, tmp_path):
    """Front {1, 3}: 1 carries the split in its metrics, 3 only in its params (an older
    trial), and is read as budget x ratio; non-LM studies have no such figure."""
    assert R.collect_memory_split(hand_study).numbers == []  # no throughput_tps: not an LM
    lm = optuna.create_study(directions=DIRS, study_name="lm")
    lm.set_metric_names(NAMES)
    lm.set_user_attr(SPEC_ATTR, StudySpec(workload="tiny-lm", space="lm", space_toml="",
                                          trials=4).to_dict())
    lm.set_user_attr(BASELINE_ATTR, {"accuracy": 0.55, "memory_budget_mb": 8.0})
    lm.set_user_attr(ENV_ATTR, {"device": "cpu"})
    trials = [_trial(0, [0.5, 2.0, 1.6]), _trial(1, [0.54, 1.0, 1.5], beta=0.3, gamma=0.15),
              _trial(2, [0.56, 0.5, 0.2], feasible=False), _trial(6, [0.55, 1.5, 1.2],
                                                                  beta=0.25, gamma=0.1)]
    for t, extra in zip(trials, [{}, {"kv_cache_mb": 2.4, "workspace_mb": 1.2},
                                 {"kv_cache_mb": 1.0, "workspace_mb": 1.0}, {}]):
        t.user_attrs["metrics"].update({"throughput_tps": 100.0 + t.values[2],
                                        "max_running": 4.0, **extra})
    lm.add_trials(trials)
    d = R.collect_memory_split(lm)
    assert d.numbers == [1, 3] and d.budget_mb == 8.0
    assert d.weights_mb == [1.5, 1.2]
    assert d.kv_cache_mb == [2.4, pytest.approx(8.0 * 0.25)]
    assert d.workspace_mb == [1.2, pytest.approx(8.0 * 0.1)]
    assert d.throughput_tps == [101.5, 101.2]
    fig = R.plot_memory_split(d)
    assert [tr.name for tr in fig.data] == ["weights (packed)", "KV cache (S_cache)",
                                            "workspace (S_mem)"]
    assert 'id="fig-memory"' in R.render_html(R.build_report(lm))
    assert 'id="fig-memory"' not in R.render_html(R.build_report(hand_study))
