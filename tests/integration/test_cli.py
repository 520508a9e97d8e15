"""The real `csearch` command: CliRunner on `search.cli.cli`, plus the console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner

from search.cli import cli
from search.spec import BASELINE_ATTR, SPEC_ATTR

REPO = Path(__file__).resolve().parents[2]
STUDY = "f"
TRIALS = 3
# Which configs run is up to the sampler seed; this one keeps the study cheap on a CPU.
SEED = "2"


def _runner() -> CliRunner:
    return CliRunner()


def _invoke(*args: str, cwd: Path | None = None):
    env = {"CSEARCH_STORAGE": None, "CSEARCH_ARTIFACTS": None}
    runner = _runner()
    if cwd is None:
        return runner.invoke(cli, list(args), env=env, catch_exceptions=False)
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return runner.invoke(cli, list(args), env=env, catch_exceptions=False)
    finally:
        os.chdir(old)


def _ok(result) -> None:
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)


def _user_error(result, *needles: str) -> str:
    """Exit status 2, one line on stderr naming the bad value, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in err, (needle, err)
    return err


@pytest.fixture(scope="module")
def study_db(tmp_path_factory):
    """One `csearch run` of 3 digits trials into a fresh SQLite file."""
    tmp = tmp_path_factory.mktemp("cli")
    url = f"sqlite:///{tmp / 'f.db'}"
    args = ["run", "--workload", "digits-cnn", "--study", STUDY, "--storage", url,
            "--trials", str(TRIALS), "--space", "compression", "--seed", SEED,
            "--device", "cpu"]
    result = _invoke(*args, cwd=tmp)
    _ok(result)
    return tmp, url, args, result


def _load(url: str, name: str = STUDY) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


# --- run and resume ---------------------------------------------------------------------

def test_run_gives_exactly_the_budget_of_finished_trials(study_db):
    tmp, url, _, result = study_db
    study = _load(url)
    assert len(study.trials) == TRIALS
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert len(study.directions) == 3
    assert study.metric_names == ["accuracy", "latency_mean_ms", "size_mb"]
    assert "Pareto front" in result.stdout
    assert not (tmp / "studies.db").exists()  # --storage was honoured


def test_rerun_resumes_and_adds_no_trials(study_db):
    tmp, url, args, _ = study_db
    _ok(_invoke(*args, cwd=tmp))
    assert len(_load(url).trials) == TRIALS


def test_resume_with_a_different_spec_names_the_difference(study_db, tmp_path):
    tmp, url, args, _ = study_db
    before = _load(url).user_attrs[SPEC_ATTR]
    result = _invoke(*args, "--objective", "accuracy:max", "--objective", "size_mb:min",
                     cwd=tmp)
    _user_error(result, "objectives", repr(STUDY))
    result = _invoke(*[a if a != "compression" else "serving" for a in args], cwd=tmp)
    _user_error(result, "space")
    study = _load(url)
    assert len(study.trials) == TRIALS and study.user_attrs[SPEC_ATTR] == before


def test_resume_takes_the_stored_values_of_options_not_given(tmp_path):
    """`create` with some options, then a bare `run --study`: the options left out take the
    stored values (not their defaults), so the stored budget runs; only an option given
    explicitly with a different value is refused, naming it."""
    _ok(_invoke("create", "--workload", "digits-cnn", "--study", "c1", "--space",
                "compression", "--trials", "3", "--seed", SEED, "--device", "cpu",
                cwd=tmp_path))
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    stored = _load(url, "c1").user_attrs[SPEC_ATTR]
    result = _invoke("run", "--study", "c1", cwd=tmp_path)
    _ok(result)
    study = _load(url, "c1")
    assert len(study.trials) == 3
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert study.user_attrs[SPEC_ATTR] == stored  # nothing taken from the defaults
    result = _invoke("run", "--study", "c1", "--space", "joint", cwd=tmp_path)
    err = _user_error(result, "space", "'compression' stored", "'joint' given")
    assert "seed" not in err and "sampler" not in err  # only what the user gave differs
    result = _invoke("run", "--study", "c1", "--seed", "5", cwd=tmp_path)
    _user_error(result, "seed (stored 2, given 5)")
    assert len(_load(url, "c1").trials) == 3


def test_resume_by_a_builtin_space_name_keeps_the_stored_version(tmp_path):
    """A study created under an older csearch stores that version of a built-in space;
    `run --space compression` by the same name resumes on the stored text, not the new."""
    _ok(_invoke("create", "--workload", "digits-cnn", "--study", "old", "--space",
                "compression", "--trials", "1", "--seed", SEED, "--device", "cpu",
                cwd=tmp_path))
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    study = _load(url, "old")
    spec = dict(study.user_attrs[SPEC_ATTR])
    older = spec["space_toml"].replace("high = 0.99", "high = 0.95")
    assert older != spec["space_toml"]
    study.set_user_attr(SPEC_ATTR, {**spec, "space_toml": older})
    _ok(_invoke("run", "--study", "old", "--space", "compression", cwd=tmp_path))
    study = _load(url, "old")
    assert study.user_attrs[SPEC_ATTR]["space_toml"] == older
    assert len(study.trials) == 1


# --- listings ---------------------------------------------------------------------------

def test_pareto_json_is_pure_json_with_the_contract_keys(study_db):
    _, url, _, _ = study_db
    result = _invoke("pareto", "--study", STUDY, "--storage", url, "--format", "json")
    _ok(result)
    rows = json.loads(result.stdout)
    assert rows
    numbers = {t.number for t in _load(url).trials}
    for r in rows:
        assert {"number", "params", "metrics", "values"} <= set(r)
        assert r["number"] in numbers
        assert r["values"] == [r["metrics"][m] for m in ("accuracy", "latency_mean_ms", "size_mb")]


def test_trials_json_is_pure_json_with_the_contract_keys(study_db):
    _, url, _, _ = study_db
    result = _invoke("trials", "--study", STUDY, "--storage", url, "--format", "json")
    _ok(result)
    rows = json.loads(result.stdout)
    assert len(rows) == TRIALS
    for r in rows:
        assert {"number", "state", "params", "metrics", "values", "feasible"} <= set(r)
        assert r["state"] == "COMPLETE" and "accuracy" in r["metrics"]


def test_studies_json_lists_the_study_with_counts(study_db):
    _, url, _, _ = study_db
    result = _invoke("studies", "--storage", url, "--format", "json")
    _ok(result)
    rows = json.loads(result.stdout)
    (row,) = [r for r in rows if r["name"] == STUDY]
    assert row["trials"] == TRIALS and row["states"] == {"COMPLETE": TRIALS}
    assert set(row["best"]) == {"accuracy", "latency_mean_ms", "size_mb"}
    assert row["workload"] == "digits-cnn"


def test_table_listings_work(study_db):
    _, url, _, _ = study_db
    for args in (["studies"], ["trials", "--study", STUDY], ["pareto", "--study", STUDY]):
        result = _invoke(*args, "--storage", url)
        _ok(result)
        assert result.stdout.strip()


def test_create_stores_a_study_without_trials(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    result = _invoke("create", "--workload", "digits-cnn", "--study", "c", "--storage", url,
                     "--space", "serving", "--trials", "5", "--device", "cpu", cwd=tmp_path)
    _ok(result)
    study = _load(url, "c")
    assert study.trials == []
    assert study.user_attrs[SPEC_ATTR]["trials"] == 5
    assert study.user_attrs[SPEC_ATTR]["space"] == "serving"
    assert "accuracy" in study.user_attrs[BASELINE_ATTR]
    listed = _invoke("trials", "--study", "c", "--storage", url, "--format", "json")
    _ok(listed)
    assert json.loads(listed.stdout) == []


def test_workloads_and_spaces_are_listed():
    result = _invoke("workloads", "--format", "json")
    _ok(result)
    assert "digits-cnn" in {w["name"] for w in json.loads(result.stdout)}
    result = _invoke("spaces", "--format", "json")
    _ok(result)
    spaces = {s["name"]: s["params"] for s in json.loads(result.stdout)}
    assert {"compression", "serving", "training", "joint"} <= set(spaces)
    assert "serve.cache_ratio" in spaces["serving"]
    table = _invoke("spaces")
    _ok(table)
    assert "prune.method" in table.stdout


# --- export -----------------------------------------------------------------------------

def test_export_writes_the_measured_model_and_load_reproduces_it(study_db, tmp_path):
    import torch

    from objectives import load_workload
    from search.export import load

    _, url, _, _ = study_db
    workload = load_workload("digits-cnn")
    for trial in _load(url).trials:
        out = tmp_path / f"t{trial.number}"
        result = _invoke("export", "--study", STUDY, "--storage", url,
                         "--trial", str(trial.number), "-o", str(out))
        _ok(result)
        metrics = trial.user_attrs["metrics"]
        size = (out / "model.safetensors").stat().st_size
        assert size == pytest.approx(metrics["size_mb"] * 1e6, rel=0.02)
        meta = json.loads((out / "csearch.json").read_text())
        assert meta["params"] == trial.params and meta["trial"] == trial.number
        model = load(out)
        assert isinstance(model, torch.nn.Module)
        assert workload.evaluate(model) == pytest.approx(metrics["accuracy"], abs=0.01)


def test_export_of_a_missing_trial_is_a_user_error(study_db, tmp_path):
    _, url, _, _ = study_db
    result = _invoke("export", "--study", STUDY, "--storage", url, "--trial", "99",
                     "-o", str(tmp_path / "x"))
    _user_error(result, "99")
    assert not (tmp_path / "x").exists()


# --- user errors: exit 2, one line, nothing written -------------------------------------

@pytest.mark.parametrize(
    "extra, needles",
    [
        (["--space", "nope-space"], ["nope-space"]),
        (["--workload", "nope-workload"], ["nope-workload"]),
        (["--objective", "acurracy:max"], ["acurracy"]),
        (["--objective", "accuracy:up"], ["'up'"]),
        (["--constraint", "accuracy_drop=<0.01"], ["accuracy_drop=<0.01"]),
        (["--constraint", "latency<=3"], ["latency"]),
        (["--trials", "-1"], ["-1"]),
        (["--device", "cuda"], ["cuda"]),
        (["--memory-budget-mb", "0"], ["memory-budget-mb"]),
    ],
    ids=["space", "workload", "metric", "direction", "constraint-syntax",
         "constraint-metric", "trials", "device", "budget"],
)
def test_bad_run_input_exits_2_and_writes_nothing(tmp_path, extra, needles):
    if extra == ["--device", "cuda"]:
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
    db = tmp_path / "new.db"
    result = _invoke("run", "--workload", "digits-cnn", "--study", "x", "--storage",
                     f"sqlite:///{db}", "--trials", "1", "--space", "compression", *extra,
                     cwd=tmp_path)
    _user_error(result, *needles)
    assert list(tmp_path.iterdir()) == []  # no database, no artifacts, no studies.db


def test_bad_input_with_the_default_storage_creates_no_studies_db(tmp_path):
    result = _invoke("run", "--space", "nope", cwd=tmp_path)
    _user_error(result, "nope")
    assert not (tmp_path / "studies.db").exists()


def test_unknown_study_for_pareto(study_db):
    _, url, _, _ = study_db
    _user_error(_invoke("pareto", "--study", "nope", "--storage", url), "nope", STUDY)


def test_studies_on_a_missing_sqlite_file_creates_nothing(tmp_path):
    db = tmp_path / "missing.db"
    _user_error(_invoke("studies", "--storage", f"sqlite:///{db}"), str(db))
    assert not db.exists()
    jr = tmp_path / "missing.log"
    _user_error(_invoke("studies", "--storage", f"journal:///{jr}"), str(jr))
    assert not jr.exists()


def test_corrupt_sqlite_file_is_refused_and_left_untouched(tmp_path):
    db = tmp_path / "corrupt.db"
    data = os.urandom(4096)
    db.write_bytes(data)
    url = f"sqlite:///{db}"
    _user_error(_invoke("studies", "--storage", url), str(db))
    _user_error(_invoke("run", "--workload", "digits-cnn", "--study", "x", "--storage", url,
                        "--trials", "1", "--space", "compression", cwd=tmp_path), str(db))
    _user_error(_invoke("pareto", "--study", "x", "--storage", url), str(db))
    assert db.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.db"]


def test_unsupported_storage_url(tmp_path):
    _user_error(_invoke("studies", "--storage", "redis://localhost/0"), "redis")


def test_a_password_in_a_storage_url_is_never_printed():
    result = _invoke("studies", "--storage",
                     "postgresql://user:s3cret-pw@127.0.0.1:1/nodb")
    assert result.exit_code == 2
    assert "s3cret-pw" not in result.stdout + result.stderr


# --- the console script -----------------------------------------------------------------

def _script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("csearch")
    cmd = [exe, *args] if exe else [sys.executable, "-m", "search.cli", *args]
    env = {k: v for k, v in os.environ.items() if k not in ("CSEARCH_STORAGE",)}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_console_script_prints_pure_json(study_db, tmp_path):
    _, url, _, _ = study_db
    proc = _script("trials", "--study", STUDY, "--storage", url, "--format", "json",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)) == TRIALS  # nothing but JSON on stdout
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [["pareto", "--study", STUDY, "--format", "json"],
                                     ["trials", "--study", STUDY], ["studies"],
                                     ["show", "--study", STUDY, "--trial", "0"],
                                     ["report", "--study", STUDY, "-o", "r.html"]],
                         ids=["pareto", "trials", "studies", "show", "report"])
def test_read_only_commands_do_not_import_torch(study_db, tmp_path, command):
    """Importing torch costs seconds; listings and the report never need it."""
    _, url, _, _ = study_db
    code = ("import sys\nfrom search.cli import cli\n"
            "try:\n    cli(sys.argv[1:], standalone_mode=False)\n"
            "finally:\n    print('torch' in sys.modules, file=sys.stderr)")
    env = {k: v for k, v in os.environ.items() if k != "CSEARCH_STORAGE"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", code, *command, "--storage", url],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "False", proc.stderr


def test_run_leaves_a_sqlite_file_that_holds_every_trial_by_itself(tmp_path):
    """`csearch run` closes its storage before the process ends (which skips the final
    garbage collection): no -wal file is left, so a copy of the .db alone has the trials."""
    db = tmp_path / "w.db"
    proc = _script("run", "--workload", "digits-cnn", "--study", "w", "--storage",
                   f"sqlite:///{db}", "--trials", "1", "--space", "compression", "--seed",
                   SEED, "--device", "cpu", "--quiet",
                   "--artifacts", "none", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not Path(f"{db}-wal").exists()
    copy = tmp_path / "copy.db"
    shutil.copy(db, copy)
    assert [t.state.name for t in _load(f"sqlite:///{copy}", "w").trials] == ["COMPLETE"]


def test_optuna_reads_the_study_with_its_own_cli(study_db, tmp_path):
    """Interoperability: `optuna best-trials` lists the csearch study."""
    exe = shutil.which("optuna")
    if exe is None:
        pytest.skip("the optuna console script is not installed")
    _, url, _, _ = study_db
    proc = subprocess.run([exe, "best-trials", "--study-name", STUDY, "--storage", url,
                           "--format", "json"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    best = json.loads(proc.stdout)
    assert best and {b["number"] for b in best} <= set(range(TRIALS))


def _default_study_params(url: str, name: str, n: int = 20) -> optuna.Study:
    """A study shaped as `csearch run` makes it by default (joint space on digits-cnn,
    per-group parameters expanded, 20 trials), its params sampled by the real space; the
    metrics are made up, since only how the tables print them is under test."""
    import random

    from benchmarks.report_large import BASELINE, synthetic_metrics
    from objectives import load_workload
    from search.study import build_spec, resolve_space
    from spaces import parse_space

    spec = build_spec(workload="digits-cnn", space="joint", objectives=(
        "accuracy:max", "latency_ms:min", "size_mb:min"), constraints=(), sampler="tpe",
        seed=0, device="cpu", trials=n, timeout=None, memory_budget_mb=None, artifacts=None)
    space = resolve_space(parse_space(spec.space_toml, name="joint"),
                          load_workload("digits-cnn"))
    study = optuna.create_study(storage=url, study_name=name, directions=spec.directions,
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.set_metric_names(spec.metric_names)
    study.set_user_attr(SPEC_ATTR, spec.to_dict())
    study.set_user_attr(BASELINE_ATTR, BASELINE)
    rng = random.Random(0)
    for _ in range(n):
        trial = study.ask()
        space.sample(trial)
        m = synthetic_metrics(trial.params, rng)
        trial.set_user_attr("metrics", m)
        study.tell(trial, [m[k] for k in spec.metric_names])
    return study


def test_trials_and_pareto_tables_fit_120_columns(tmp_path):
    url = f"sqlite:///{tmp_path / 'd.db'}"
    study = _default_study_params(url, "d")
    assert max(len(" ".join(f"{k}={v}" for k, v in t.params.items()))
               for t in study.trials) > 300  # what one line per trial used to hold
    for cmd in ("trials", "pareto"):
        out = _invoke(cmd, "--study", "d", "--storage", url)
        _ok(out)
        lines = out.stdout.splitlines()
        assert len(lines) > 2 and max(map(len, lines)) <= 120, max(lines, key=len)
        assert "q.method=" in out.stdout or "p.method=" in out.stdout  # shortened names
        assert "…" in out.stdout  # cut to fit, not wrapped
        full = _invoke(cmd, "--study", "d", "--storage", url, "--params")
        _ok(full)
        first = next(t for t in study.trials
                     if str(t.number) == full.stdout.splitlines()[2].split()[0])
        assert all(f"{k}=" in full.stdout.splitlines()[2] for k in first.params)
        raw = _invoke(cmd, "--study", "d", "--storage", url, "--format", "json")
        rows = json.loads(raw.stdout)
        by_number = {t.number: t for t in study.trials}
        assert rows and all(r["params"] == by_number[r["number"]].params for r in rows)


def test_table_params_leave_out_what_omitting_them_means():
    from search.cli.tables import changed_params, params_text

    p = {"prune.method": "none", "quant.method": "lowbit", "quant.bits": 4,
         "quant.method[fc1]": "inherit", "quant.bits[fc1]": 4, "quant.bits[fc2]": 2,
         "train.epochs": 0, "train.lr": 0.01, "serve.batch_size": 32,
         "serve.cache_ratio": 0.123456}
    assert changed_params(p) == {"quant.method": "lowbit", "quant.bits": 4,
                                 "quant.bits[fc2]": 2, "serve.cache_ratio": 0.123456}
    assert params_text(p) == "q.method=lowbit q.bits=4 q.bits[fc2]=2 s.cache_ratio=0.123"
    assert changed_params({**p, "train.epochs": 2})["train.lr"] == 0.01


def test_table_params_leave_out_what_has_no_effect():
    """A global method every layer group overrides, and bits no lowbit layer uses, are not
    shown (issue 25: every group on `none` was shown as `q.method=lowbit`)."""
    from search.cli.tables import changed_params, params_text

    groups = ["attn", "mlp"]
    p = {"prune.method": "none", "prune.amount[mlp]": 0.5, "quant.method": "lowbit",
         "quant.bits": 4, "quant.method[attn]": "none", "quant.method[mlp]": "none",
         "quant.bits[mlp]": 3, "quant.kv_bits": 8}
    assert changed_params(p, groups) == {"quant.method[attn]": "none",
                                         "quant.method[mlp]": "none", "quant.kv_bits": 8}
    assert "q.method=lowbit" not in params_text(p, groups=groups)
    # Groups unknown: a layer outside the named ones may follow the global method.
    assert changed_params(p)["quant.method"] == "lowbit"
    # One group on lowbit with its own bits: the global bits are unused, its own are not.
    q = {**p, "quant.method[mlp]": "lowbit"}
    assert changed_params(q, groups) == {"quant.method[attn]": "none",
                                         "quant.bits[mlp]": 3, "quant.kv_bits": 8}
    # Without lowbit anywhere, bits mean nothing; with global pruning, amounts do.
    r = {"prune.method": "global", "prune.amount": 0.3, "prune.threshold": 0.1,
         "quant.method": "int8_dynamic", "quant.bits": 4, "quant.group_size": 32}
    assert changed_params(r) == {"prune.method": "global", "prune.amount": 0.3,
                                 "quant.method": "int8_dynamic"}
    # int4 kernels take a group size (bits stay lowbit's).
    i4 = {**r, "quant.method": "int4_hqq"}
    assert changed_params(i4) == {"prune.method": "global", "prune.amount": 0.3,
                                  "quant.method": "int4_hqq", "quant.group_size": 32}


def test_delete_asks_then_deletes(tmp_path):
    url = f"sqlite:///{tmp_path / 'del.db'}"
    optuna.create_study(study_name="gone", storage=url).optimize(
        lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    result = _runner().invoke(cli, ["delete", "--study", "gone", "--storage", url], input="n\n")
    assert result.exit_code == 1 and "with 2 trial(s)?" in result.output
    assert optuna.get_all_study_names(url) == ["gone"]
    _ok(_invoke("delete", "--study", "gone", "--storage", url, "--yes"))
    assert optuna.get_all_study_names(url) == []
    _user_error(_invoke("delete", "--study", "gone", "--storage", url, "--yes"), "'gone'")


@pytest.mark.parametrize("workers", [1, 2])
def test_library_import_noise_stays_out_of_the_output(tmp_path, workers):
    """torchao warns while it is imported (its CUDA-only .so files, torch's pytree about
    its enums); a trial that quantizes with torchao prints none of that without --debug,
    in the command's process or in the workers `--workers N` spawns."""
    noisy = subprocess.run([sys.executable, "-c", "import torchao"], capture_output=True,
                           text=True, timeout=300)
    noise = [ln for ln in (noisy.stdout + noisy.stderr).splitlines() if ln.strip()]
    (tmp_path / "s.toml").write_text('[params."quant.method"]\nchoices = ["int4_hqq"]\n')
    r = _script("run", "--workload", "digits-cnn", "--study", "q", "--storage",
                f"sqlite:///{tmp_path / 'q.db'}",
                "--trials", str(workers), "--workers", str(workers), "--space",
                str(tmp_path / "s.toml"), "--device", "cpu", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert "Pareto front" in r.stdout
    assert "torchao" not in out and "_pytree" not in out
    for line in noise:  # whatever this machine's torchao says at import
        assert line.split(":")[0] not in out, line
