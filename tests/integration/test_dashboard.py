"""`csearch dashboard` on a real study: the API lists it, feasibility reaches the dashboard,
its best trials are the feasible front, and a trial's artifact downloads and loads."""

from __future__ import annotations

import json
from pathlib import Path
import shutil

import optuna
import pytest
import torch

from search.results import is_feasible
from search.storage import open_storage

from dashboard_fixtures import STUDY, csearch, dashboard, get, get_json, real_study  # noqa: F401
from dashboard_fixtures import running_dashboard

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


def _study_id(base: str) -> int:
    studies = get_json(base + "/api/studies")["study_summaries"]
    ids = [s["study_id"] for s in studies if s["study_name"] == STUDY]
    assert ids, studies
    return ids[0]


def _load(url: str) -> optuna.Study:
    return optuna.load_study(study_name=STUDY,
                             storage=open_storage(url, create=False, heartbeat=False))


def test_api_lists_the_study_with_metric_names(dashboard):
    studies = get_json(dashboard + "/api/studies")["study_summaries"]
    s = next(s for s in studies if s["study_name"] == STUDY)
    assert s["directions"] == ["maximize", "minimize", "minimize"]
    detail = get_json(f"{dashboard}/api/studies/{s['study_id']}?after=0")
    assert detail["objective_names"] == ["accuracy", "latency_mean_ms", "size_mb"]


def test_feasibility_in_the_api_and_feasible_best_trials(dashboard, real_study):
    url, _ = real_study
    study = _load(url)
    detail = get_json(f"{dashboard}/api/studies/{_study_id(dashboard)}?after=0")
    api = {t["number"]: t for t in detail["trials"]}
    ours = {t.number: t for t in study.trials}
    assert set(api) == set(ours)
    flags = {}
    for n, t in ours.items():
        if t.state.name != "COMPLETE":
            continue
        # The dashboard's rule (its bundle: constraints.every(c => c <= 0)).
        dash_feasible = all(c <= 0 for c in api[n]["constraints"])
        assert api[n]["constraints"], f"trial {n} has no constraints for the dashboard"
        assert dash_feasible == is_feasible(t), n
        flags[n] = dash_feasible
    assert True in flags.values() and False in flags.values(), (
        f"the fixture study should have feasible and infeasible trials: {flags}")
    best = sorted(t["number"] for t in detail["best_trials"])
    pareto = json.loads(csearch("pareto", "--study", STUDY, "--storage", url,
                                "--format", "json").stdout)
    assert best == sorted(r["number"] for r in pareto)
    assert all(flags[n] for n in best)


def test_artifact_downloads_and_loads(dashboard, real_study, tmp_path):
    from search.export import META_FILE, MODEL_FILE, export_trial, load

    url, art_dir = real_study
    study = _load(url)
    sid = _study_id(dashboard)
    detail = get_json(f"{dashboard}/api/studies/{sid}?after=0")
    trial = next(t for t in detail["trials"] if t["state"] == "Complete" and t["artifacts"])
    a = trial["artifacts"][0]
    assert a["mimetype"] == "application/octet-stream"
    frozen = next(t for t in study.trials if t.number == trial["number"])
    assert frozen.user_attrs["artifact_id"] == a["artifact_id"]
    # In a folder named by study and trial number: the artifact folder says whose it is.
    number, key = a["artifact_id"].split("-")
    assert int(number) == trial["number"]
    assert (Path(art_dir) / STUDY / f"trial-{number}" / f"{key}.safetensors").is_file()
    data = get(f"{dashboard}/artifacts/{sid}/{trial['trial_id']}/{a['artifact_id']}")

    # `csearch export` uses the stored artifact: same bytes as the dashboard's download.
    exported = tmp_path / "exported"
    meta = export_trial(study, trial["number"], exported)
    assert meta["model_source"] == "artifact"
    assert (exported / MODEL_FILE).read_bytes() == data

    # The downloaded bytes alone (plus the export metadata) load into a working model.
    downloaded = tmp_path / "downloaded"
    downloaded.mkdir()
    (downloaded / MODEL_FILE).write_bytes(data)
    shutil.copy(exported / META_FILE, downloaded / META_FILE)
    model = load(downloaded)
    from objectives import load_workload

    wl = load_workload("digits-cnn")
    x = wl.request_inputs[:8] if torch.is_tensor(wl.request_inputs) else None
    if x is not None:
        with torch.no_grad():
            out = model(x)
        assert out.shape[0] == 8 and torch.isfinite(out.float()).all()
    acc = wl.evaluate(model)
    assert acc == pytest.approx(frozen.user_attrs["metrics"]["accuracy"], abs=0.02)


def test_dashboard_errors_are_one_line(real_study, dashboard):
    url, _ = real_study
    port = dashboard.rsplit(":", 1)[1]
    r = csearch("dashboard", "--study", STUDY, "--storage", url, "--port", port, timeout=60)
    assert r.returncode == 2 and "cannot listen on 127.0.0.1:" in r.stderr
    r = csearch("dashboard", "--study", "nope", "--storage", url, "--port", "1", timeout=60)
    assert r.returncode == 2 and "no study named 'nope'" in r.stderr


def test_artifacts_none_uploads_nothing_and_export_re_evaluates(tmp_path):
    from dashboard_fixtures import SPACE

    (tmp_path / "space.toml").write_text(SPACE)
    url = f"sqlite:///{tmp_path}/s.db"
    r = csearch("run", "--workload", "digits-cnn", "--study", "noart", "--storage", url,
                "--trials", "1", "--space",
                str(tmp_path / "space.toml"), "--sampler", "random", "--artifacts", "none",
                "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    study = optuna.load_study(study_name="noart",
                              storage=open_storage(url, create=False, heartbeat=False))
    t = study.trials[0]
    assert t.state.name == "COMPLETE"
    assert "artifact_id" not in t.user_attrs
    assert not any(k.startswith("artifacts:") for k in t.system_attrs)
    assert not (tmp_path / "s-artifacts").exists()
    r = csearch("export", "--study", "noart", "--storage", url, "--trial", "0",
                "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "from re-evaluated" in r.stdout
    meta = json.loads((tmp_path / "out" / "csearch.json").read_text())
    assert meta["model_source"] == "re-evaluated"


def test_dashboard_opens_on_a_storage_without_a_default_study(tmp_path):
    """No --study and no study named `default`: the dashboard still serves every study,
    and a study detail's `after` slice is optuna-dashboard's."""
    url = f"sqlite:///{tmp_path}/other.db"
    study = optuna.create_study(study_name="other", storage=url,
                                directions=["maximize", "minimize"])
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_float("y", 0, 1)),
                   n_trials=3)
    with running_dashboard("--storage", url) as base:
        studies = get_json(base + "/api/studies")["study_summaries"]
        assert [s["study_name"] for s in studies] == ["other"]
        sid = studies[0]["study_id"]
        full = get_json(f"{base}/api/studies/{sid}?after=0")
        assert [t["number"] for t in full["trials"]] == [0, 1, 2]
        assert [t["number"] for t in get_json(f"{base}/api/studies/{sid}?after=2")["trials"]
                ] == [2]
        front = {r.number for r in study.best_trials}  # no constraints: Optuna's own front
        assert {t["number"] for t in full["best_trials"]} == front
