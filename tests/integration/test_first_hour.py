"""Issue 26, the first hour of a new user: progress a log can hold, bad arguments refused
before the heavy imports, a quality guard by default, a trial that says why it is
infeasible (`show`, tables, `deploy`), honest columns and the small things."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from search.cli import cli
from search.cli.progress import Progress
from search.spec import DEFAULT_GUARD, SPEC_ATTR, StudySpec

REPO = Path(__file__).resolve().parents[2]
NAMES = ["accuracy", "latency_mean_ms", "size_mb"]
DIRS = ["maximize", "minimize", "minimize"]
T0 = datetime(2026, 1, 1)


def _invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, list(args), env={"CSEARCH_STORAGE": None, **(env or {})},
                              catch_exceptions=False)


def _ok(result) -> str:
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    return result.stdout


# --- fast errors ------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--trials", "-1"], "--trials must be 0 or more, got -1"),
    (["--constraint", "accuracy_drop<<0.01"], "bad constraint 'accuracy_drop<<0.01'"),
], ids=["trials", "constraint"])
def test_bad_run_arguments_exit_2_before_torch_is_imported(tmp_path, args, message):
    """Refused by the argument checks, before the imports that take seconds (torch,
    the workload): the timing is in benchmarks/RESULTS.md, "Issue 26"."""
    code = ("import sys\nfrom search.cli import main\ntry:\n    main()\n"
            "finally:\n    print('torch imported:', 'torch' in sys.modules, file=sys.stderr)")
    env = {k: v for k, v in os.environ.items() if k != "CSEARCH_STORAGE"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", code, "run", "--workload", "digits-cnn",
                           *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert err == [f"Error: {message}" + err[0].split(message, 1)[1], "torch imported: False"]
    assert "Traceback" not in proc.stderr and list(tmp_path.iterdir()) == []


# --- the quality guard ------------------------------------------------------------------

def _options(**changes) -> dict:
    p = {"workload": "digits-cnn", "workload_data": None, "space": "compression",
         "objectives": (), "constraints": (), "sampler": "refine", "seed": 0,
         "device": "cpu", "trials": 5, "timeout": None, "memory_budget_mb": None,
         "artifacts": "none", "no_guard": False, "storage": None, "study_name": "s"}
    return {**p, **changes}


def test_a_study_without_a_quality_constraint_gets_the_guard_in_its_spec():
    from search.cli.options import make_spec

    spec = make_spec(_options(), "sqlite:///x.db")
    assert spec.guard == DEFAULT_GUARD == "accuracy_drop<=0.01"
    assert spec.to_dict()["guard"] == DEFAULT_GUARD  # the stored spec says so
    assert [str(c) for c in spec.parsed_constraints()] == [DEFAULT_GUARD]
    assert spec.accuracy_guard() == 0.01  # hopeless trials are stopped early too
    # Another constraint keeps it; a quality constraint of the user's replaces it.
    spec = make_spec(_options(constraints=("memory_mb<=0.9",)), "sqlite:///x.db")
    assert [str(c) for c in spec.parsed_constraints()] == ["memory_mb<=0.9", DEFAULT_GUARD]
    for quality in ("accuracy_drop<=0.05", "accuracy>=0.9", "perplexity<=5"):
        assert make_spec(_options(constraints=(quality,)), "sqlite:///x.db").guard is None
    assert make_spec(_options(no_guard=True), "sqlite:///x.db").guard is None


def test_a_study_stored_before_the_guard_resumes_as_it_was():
    """Its stored spec has no `guard`: resuming with the options it was run with (or none)
    is not refused and adds no guard; --no-guard on a guarded study is refused."""
    from search.cli.options import make_spec, resumed_spec

    old_dict = make_spec(_options(), "sqlite:///x.db").to_dict()
    del old_dict["guard"]
    old = StudySpec.from_dict(old_dict)
    assert old.guard is None
    fresh = make_spec(_options(trials=9), "sqlite:///x.db")
    for given in (set(), {"trials"}, {"workload", "space", "trials"}):
        resumed = resumed_spec(fresh, old, given)
        assert resumed.guard is None and resumed.differences(old) == []
    guarded = make_spec(_options(), "sqlite:///x.db")
    fresh = make_spec(_options(no_guard=True), "sqlite:///x.db")
    diff = resumed_spec(fresh, guarded, {"no_guard"}).differences(guarded)
    assert diff and "guard" in diff[0] and DEFAULT_GUARD in diff[0]


@pytest.fixture(scope="module")
def guarded_run(tmp_path_factory):
    """A real 3-trial digits study through `csearch run` with a log (not a terminal)."""
    tmp = tmp_path_factory.mktemp("guarded")
    url = f"sqlite:///{tmp / 'g.db'}"
    res = _invoke("run", "--study", "g", "--storage", url, "--workload", "digits-cnn",
                  "--space", "compression", "--trials", "3", "--seed", "2", "--device", "cpu",
                  "--artifacts", str(tmp / "art"), env={"CSEARCH_SPOOL_DIR": str(tmp / "spool")})
    _ok(res)
    return tmp, url, res


def test_run_logs_each_trial_and_keeps_the_guard(guarded_run):
    from search.results import pareto_rows

    tmp, url, res = guarded_run
    trial_lines = [ln for ln in res.stdout.splitlines() if ln.startswith("trial ")
                   and ":" not in ln.split()[1]]
    assert [ln.split()[1] for ln in trial_lines] == ["0", "1", "2"]
    assert trial_lines[-1].endswith("[3/3 done]")
    assert "guard accuracy_drop<=0.01" in res.stderr
    study = optuna.load_study(study_name="g", storage=url)
    assert study.user_attrs[SPEC_ATTR]["guard"] == DEFAULT_GUARD
    for t in study.trials:
        if t.state == TrialState.COMPLETE:
            assert DEFAULT_GUARD in t.constraints
    assert all(r["metrics"]["accuracy_drop"] <= 0.01 for r in pareto_rows(study))


def test_small_things_of_a_run(guarded_run, monkeypatch):
    """Artifacts named by study and trial; no empty spool folders; export's path."""
    tmp, url, _ = guarded_run
    study = optuna.load_study(study_name="g", storage=url)
    for t in study.trials:  # art/g/trial-N/<the id's hex>.safetensors
        number, key = t.user_attrs["artifact_id"].split("-")
        assert int(number) == t.number
        assert (tmp / "art" / "g" / f"trial-{t.number}" / f"{key}.safetensors").is_file()
    assert [p.name for p in (tmp / "art").iterdir()] == ["g"]
    assert not (tmp / "spool").exists() or list((tmp / "spool").iterdir()) == []
    monkeypatch.chdir(tmp)
    out = _ok(_invoke("export", "--study", "g", "--storage", url, "--trial", "0",
                      "-o", "best/"))
    assert "best/model.safetensors" in out and "//" not in out
    assert (tmp / "best" / "model.safetensors").is_file()


def test_the_artifact_store_reads_by_id_and_keeps_older_flat_artifacts(tmp_path):
    from search.artifacts import TrialArtifactStore, new_artifact_id
    from optuna.artifacts.exceptions import ArtifactNotFound

    aid = new_artifact_id(12)
    TrialArtifactStore(tmp_path, "my study/1").write(aid, io.BytesIO(b"model"))
    assert (tmp_path / "my_study_1" / "trial-12").is_dir()
    reader = TrialArtifactStore(tmp_path)  # the dashboard's and export's: any study
    assert reader.open_reader(aid).read() == b"model"
    old = "0b5c3f9e-8d1e-4f5a-9c43-7e1f2a3b4c5d"  # Optuna's own id, a file in the folder
    (tmp_path / old).write_bytes(b"older")
    assert reader.open_reader(old).read() == b"older"
    with pytest.raises(ArtifactNotFound):
        reader.open_reader(new_artifact_id(12))
    with pytest.raises(ArtifactNotFound):
        reader.open_reader("../etc/passwd")


# --- a trial that says why it is infeasible ---------------------------------------------

def _trial(number: int, accuracy: float, guard: float, memory: float):
    metrics = {"accuracy": accuracy, "accuracy_drop": 0.988 - accuracy,
               "latency_mean_ms": 3.0, "size_mb": 0.1, "memory_mb": 0.9 + memory}
    t = create_trial(state=TrialState.COMPLETE, values=[accuracy, 3.0, 0.1],
                     params={"prune.method": "none"},
                     distributions={"prune.method": CategoricalDistribution(["none"])},
                     user_attrs={"metrics": metrics},
                     system_attrs={f"constraints:{DEFAULT_GUARD}": guard,
                                   "constraints:memory_budget": memory,
                                   "constraints": [guard, memory]})
    t.datetime_start = T0 + timedelta(seconds=10 * number)
    t.datetime_complete = t.datetime_start + timedelta(seconds=3)
    return t


@pytest.fixture
def hand_db(tmp_path) -> str:
    """Trial 0 feasible; trial 1 at chance level (0.887 below the base), within memory."""
    url = f"sqlite:///{tmp_path / 'h.db'}"
    study = optuna.create_study(storage=url, study_name="h", directions=DIRS)
    study.set_metric_names(NAMES)
    spec = StudySpec(workload="digits-cnn", space="joint", space_toml="", trials=2,
                     guard=DEFAULT_GUARD, artifacts=str(tmp_path / "art"))
    study.set_user_attr(SPEC_ATTR, spec.to_dict())
    study.add_trial(_trial(0, 0.985, -0.007, -0.2))
    study.add_trial(_trial(1, 0.101, 0.877, -0.1))
    return url


def test_show_names_the_broken_constraint_and_its_value(hand_db):
    out = _ok(_invoke("show", "--study", "h", "--storage", hand_db, "--trial", "1"))
    first = out.splitlines()[0]
    assert "INFEASIBLE" in first and "breaks accuracy_drop<=0.01" in first
    assert "accuracy_drop=0.887" in first and "0.877 over" in first
    assert "accuracy_drop=0.887: BROKEN, 0.877 over" in out
    assert "memory_budget" in out and "ok, 0.1 MB to spare" in out
    d = json.loads(_ok(_invoke("show", "--study", "h", "--storage", hand_db, "--trial", "1",
                               "--format", "json")))
    assert d["feasible"] is False and d["objectives"]["accuracy"] == 0.101
    assert d["broken"] == [{"constraint": DEFAULT_GUARD, "metric": "accuracy_drop",
                            "value": pytest.approx(0.887), "by": 0.877}]
    ok = json.loads(_ok(_invoke("show", "--study", "h", "--storage", hand_db, "--trial", "0",
                                "--format", "json")))
    assert ok["feasible"] is True and ok["broken"] == []
    res = _invoke("show", "--study", "h", "--storage", hand_db, "--trial", "7")
    assert res.exit_code == 2 and "no trial 7; valid: 0..1" in res.stderr


def test_the_trials_table_says_what_a_trial_breaks(hand_db):
    out = _ok(_invoke("trials", "--study", "h", "--storage", hand_db))
    row = next(ln for ln in out.splitlines() if ln.startswith("1 "))
    assert "breaks accuracy_drop<=0.01 by 0.877" in row
    rows = json.loads(_ok(_invoke("trials", "--study", "h", "--storage", hand_db,
                                  "--format", "json")))
    assert [r["broken"] != [] for r in rows] == [False, True]


def test_deploy_of_an_infeasible_trial_needs_force_and_says_why(hand_db):
    res = _invoke("deploy", "--study", "h", "--storage", hand_db, "--trial", "1")
    assert res.exit_code == 2
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "infeasible" in err and "--force" in err
    assert "accuracy_drop<=0.01 (accuracy_drop=0.887, 0.877 over)" in err
    # With --force the infeasibility is only a warning (this trial then has no artifact).
    res = _invoke("deploy", "--study", "h", "--storage", hand_db, "--trial", "1", "--force")
    assert "warning: deploying infeasible trial 1: breaks accuracy_drop<=0.01" in res.stderr
    assert "no stored artifact" in res.stderr and "infeasible: " not in res.stderr


# --- progress ---------------------------------------------------------------------------

class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _study() -> optuna.Study:
    study = optuna.create_study(directions=DIRS)
    study.set_metric_names(NAMES)
    for n, (acc, guard) in enumerate([(0.985, -0.007), (0.101, 0.877), (0.98, -0.002)]):
        study.add_trial(_trial(n, acc, guard, -0.1))
    return study


def _spec(trials: int = 6) -> StudySpec:
    return StudySpec(workload="digits-cnn", space="joint", space_toml="", trials=trials,
                     guard=DEFAULT_GUARD)


def test_a_log_gets_a_line_per_trial_and_a_stage_line_at_most_every_10_s():
    clock, buf = _Clock(), io.StringIO()
    p = Progress("lines", stream=buf, err=buf, clock=clock).start(_spec(), None)
    # Training at first use: a step a second for 95 s, no trial finishing.
    for step in range(95):
        clock.now = float(step)
        p.stage("training tiny-lm, first use: step", step + 1, 400)
    # A stage that says the same thing for a minute is one line.
    for s in range(60):
        clock.now = 100.0 + s
        p.stage("measuring the baseline (the uncompressed model)")
    study = _study()
    for t in study.trials:  # trials finishing within a second are each a line
        clock.now += 0.3
        p(study, t)
    lines = buf.getvalue().splitlines()
    steps = [ln for ln in lines if ln.startswith("training")]
    assert steps[0] == "training tiny-lm, first use: step 1/400"
    assert 9 <= len(steps) <= 10 and steps[-1].endswith("/400")
    assert lines.count("measuring the baseline (the uncompressed model)") == 1
    assert len(lines) == len(set(lines))  # never the same line twice
    trial_lines = [ln for ln in lines if ln.startswith("trial ")]
    assert len(trial_lines) == 3
    assert "INFEASIBLE" in trial_lines[1] and "breaks accuracy_drop<=0.01" in trial_lines[1]
    assert trial_lines[2].endswith("[3/6 eta 2m40s]")  # 160.9 s for 3 trials, 3 left


def test_a_note_counts_as_a_line_for_the_10_s_limit():
    clock, buf = _Clock(), io.StringIO()
    p = Progress("lines", stream=buf, err=buf, clock=clock).start(_spec(), None)
    p.note("study 's' created")
    clock.now = 9.0
    p.stage("trial 0: serve")
    assert buf.getvalue().splitlines() == ["study 's' created"]
    clock.now = 10.0
    p._locked_tick()  # the once-a-second tick shows the stage still under way
    assert buf.getvalue().splitlines() == ["study 's' created", "trial 0: serve"]


def test_the_eta_does_not_grow_while_a_trial_runs():
    clock = _Clock()
    p = Progress("lines", stream=io.StringIO(), clock=clock).start(_spec(), None)
    study = _study()
    clock.now = 30.0
    p(study, study.trials[0])
    before = p.status()
    clock.now = 3000.0
    p.stage("trial 1: finetune")
    assert p.status() == "1/6 eta 2m30s | trial 1: finetune | " + before.split(" | ")[1]
    assert before.startswith("1/6 eta 2m30s | best accuracy=0.985")  # the same ETA


def test_json_lines():
    clock, buf = _Clock(), io.StringIO()
    p = Progress("json", stream=buf, clock=clock).start(_spec(), None)
    p.note("study 's' created")
    p.stage("training tiny-lm, first use: step", 1, 400)  # within 10 s of the last line
    clock.now = 10.0
    p.stage("training tiny-lm, first use: step", 1, 400)
    study = _study()
    for t in study.trials:
        p(study, t)
    events = [json.loads(ln) for ln in buf.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["note", "stage", "trial", "trial", "trial"]
    assert events[1]["done"] == 1 and events[1]["total"] == 400
    infeasible = events[3]
    assert infeasible["feasible"] is False and infeasible["broken"][0]["constraint"] == \
        DEFAULT_GUARD
    assert events[-1]["finished"] == 3 and events[-1]["budget"] == 6


def test_the_bar_is_redrawn_only_when_it_changes_and_at_most_once_a_second():
    clock, tty = _Clock(), _Tty()
    p = Progress("tty", stream=tty, clock=clock).start(_spec(), None)
    assert p.frames == 1  # 0/6
    for i in range(300):  # a stage reported every 0.1 s for 30 s, the same text
        clock.now = i / 10
        p.stage("trial 0: finetune")
    assert p.frames == 2  # drawn once, a second after the first frame
    for i in range(300):  # now a step count that changes every 0.1 s
        clock.now = 30 + i / 10
        p.stage("trial 0: finetune step", i + 1, 300)
    assert 28 <= p.frames - 2 <= 31  # once a second
    p.close()
    assert "trial 0: finetune step 300/300" not in tty.getvalue().splitlines()[-1]


def test_quiet_shows_nothing():
    buf = io.StringIO()
    p = Progress("quiet", stream=buf, err=buf).start(_spec(), None)
    p.stage("training")
    study = _study()
    for t in study.trials:
        p(study, t)
    p.note("x")
    p.close()
    assert buf.getvalue() == "" and p.done == 3


# --- honest columns ---------------------------------------------------------------------

def test_numbers_are_plain_and_the_front_has_no_modelled_rps_column():
    from search.cli.tables import fmt_value, pareto_table

    assert [fmt_value(v) for v in (10640.3, 0.00001234, 0.5, 123.456, 0.0)] == \
        ["10640", "0.00001234", "0.5", "123.5", "0"]
    row = {"number": 3, "values": [0.5, 10640.3, 1.2], "params": {},
           "metrics": {"size_mb": 1.2, "accuracy_drop": 0.001, "perplexity": 4.5,
                       "ttft_ms": 12.5, "throughput_tps": 10640.3, "throughput_rps": 370.0}}
    lm = pareto_table([row], ["accuracy", "throughput_tps", "size_mb"], {"size_mb": 2.4})
    header = lm.splitlines()[0].split()
    assert header == ["#", "accuracy", "throughput_tps", "size_mb", "smaller", "accuracy_drop",
                      "perplexity", "ttft_ms", "params"]
    assert "e+" not in lm and "10640" in lm and "rps" not in lm
    row["metrics"] = {"size_mb": 1.2, "accuracy_drop": 0.001, "speedup": 1.5,
                      "throughput_rps": 370.0}
    cls = pareto_table([row], NAMES, {"size_mb": 2.4})
    assert "rps" not in cls and "speedup" in cls


def test_workloads_fit_120_columns():
    out = _ok(_invoke("workloads"))
    assert max(len(ln) for ln in out.splitlines()) <= 120
    assert "tiny-lm" in out and "digits-cnn" in out


# --- the test suite's own markers ---------------------------------------------------------

def test_every_test_that_needs_postgresql_is_marked(request):
    """So that `pytest -m postgres` selects all of them (the conftest hook adds it)."""
    for item in request.session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        needs = "postgres_url" in item.fixturenames or "postgresql" in params.values()
        if needs:
            assert item.get_closest_marker("postgres") is not None, item.nodeid
        if "mysql" in params.values():
            assert item.get_closest_marker("mysql") is not None, item.nodeid
