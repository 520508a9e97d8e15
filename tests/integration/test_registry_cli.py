"""`csearch deploy`, `versions`, `promote`, `rollback` and `loadtest`, run for real
(CliRunner) on a copy of a real digits study; the load test runs against a test-only
HTTP server serving a deployed version on a free port."""

from __future__ import annotations

import json

import optuna
import pytest
import torch
from click.testing import CliRunner

from search.cli import cli
from search.export import export_trial, load
from search.registry import Registry
from search.storage import open_storage

from registry_fixtures import STUDY, model_server, source_study
from test_cli import _user_error  # one line, exit 2, no traceback

JSON_KEYS = {"mean_ms", "p50_ms", "p99_ms", "throughput_rps", "errors", "requests", "client_cpu_ms",
             "versions"}


def _invoke(*args: str):
    return CliRunner().invoke(cli, list(args), env={"CSEARCH_STORAGE": None},
                              catch_exceptions=False)


def _ok(result) -> str:
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    return result.stdout


@pytest.fixture
def url(tmp_path_factory, tmp_path) -> str:
    """A private copy of the source study in a fresh database (its artifacts stay shared)."""
    src, name = source_study(tmp_path_factory)
    dst = f"sqlite:///{tmp_path / 'studies.db'}"
    optuna.copy_study(from_study_name=name, from_storage=src,
                      to_storage=open_storage(dst, create=True, heartbeat=False))
    return dst


def _state(url: str) -> tuple:
    """Everything the registry holds, to check that a refused command wrote nothing."""
    reg = Registry(url)
    return tuple((m, tuple(reg.versions(m)), tuple(map(str, reg.history(m))))
                 for m in reg.models())


def test_deploy_versions_promote_rollback(url):
    out = _ok(_invoke("deploy", "--study", STUDY, "--trial", "0", "--storage", url))
    assert f"as {STUDY} v1" in out
    _ok(_invoke("deploy", "--study", STUDY, "--trial", "1", "--storage", url))
    _ok(_invoke("deploy", "--study", STUDY, "--trial", "1", "--name", "other",
                "--storage", url))
    assert "production v1 (was none)" in _ok(_invoke("promote", STUDY, "1", "--storage", url))
    assert "production v2 (was v1)" in _ok(_invoke("promote", STUDY, "2", "--storage", url))
    table = _ok(_invoke("versions", "--storage", url))
    assert "production" in table and "other" in table and f"history of {STUDY}:" in table
    # The study's objectives (the mean latency), not the median that a cache hit sets.
    assert "objectives (of the study)" in table and "latency_mean_ms=" in table
    assert "latency_ms=" not in table.replace("latency_mean_ms=", "")
    assert "rolled back from v2" in _ok(_invoke("rollback", STUDY, "--storage", url))
    rows = json.loads(_ok(_invoke("versions", "--name", STUDY, "--storage", url,
                                  "--format", "json")))
    assert [r["name"] for r in rows] == [STUDY]
    (row,) = rows
    assert row["aliases"] == {"production": 1}
    assert [(v["version"], v["trial"]) for v in row["versions"]] == [(1, 0), (2, 1)]
    assert [(e["action"], e["version"]) for e in row["history"]] == [
        ("promote", 1), ("promote", 2), ("rollback", 1)]
    assert all(e["at"] for e in row["history"])


def test_bad_input_is_one_line_exit_2_and_writes_nothing(url, tmp_path):
    _ok(_invoke("deploy", "--study", STUDY, "--trial", "0", "--storage", url))
    before = _state(url)
    cases = [
        (("deploy", "--study", "nope", "--trial", "0"), ("'nope'",)),
        (("deploy", "--study", STUDY, "--trial", "9"), ("no trial 9",)),
        (("promote", "nope", "1"), ("no model named 'nope'",)),
        (("promote", STUDY, "5"), ("has no version 5", "1..1")),
        (("rollback", STUDY), ("no previous production",)),
        (("rollback", "nope"), ("no model named 'nope'",)),
        (("versions", "--name", "nope"), ("no model named 'nope'",)),
    ]
    for args, needles in cases:
        _user_error(_invoke(*args, "--storage", url), *needles)
    _ok(_invoke("promote", STUDY, "1", "--storage", url))
    _user_error(_invoke("rollback", STUDY, "--storage", url), "production is v1")
    after = _state(url)
    assert after[0][:2] == before[0][:2] and len(Registry(url).history(STUDY)) == 1
    _user_error(_invoke("versions", "--storage", f"journal:///{tmp_path}/j.log"),
                "need an SQL storage")
    _user_error(_invoke("versions", "--storage", f"sqlite:///{tmp_path}/missing.db"),
                "no database")
    assert not (tmp_path / "missing.db").exists()


def test_loadtest_replays_the_trace_and_stores_served(url, tmp_path):
    reg = Registry(url)
    v = reg.deploy(optuna.load_study(study_name=STUDY, storage=url), 0, "m")
    model, workload = reg.load_model("m", v.version)
    with model_server(model, workload, "m", v.version) as server:
        out = _ok(_invoke("loadtest", "--url", server, "--study", STUDY, "--trial", "0",
                          "--requests", "300", "--concurrency", "8", "--storage", url,
                          "--format", "json"))
        res = json.loads(out)
        assert set(res) == JSON_KEYS | {"hit_rate"}
        assert res["errors"] == 0 and res["requests"] == 300
        assert 0 < res["p50_ms"] <= res["p99_ms"] and res["mean_ms"] > 0
        assert res["throughput_rps"] > 0
        # A Zipf trace repeats popular requests: the server's cache answers some.
        assert 0 < res["hit_rate"] < 1
        table = _ok(_invoke("loadtest", "--url", server + "/", "--study", STUDY,
                            "--requests", "40", "--storage", url))
        assert "throughput_rps" in table and "p99_ms" in table
        # Served outputs agree with the exported trial's model.
        import httpx

        export_trial(optuna.load_study(study_name=STUDY, storage=url), 0, tmp_path / "e")
        exported = load(tmp_path / "e")
        items = [workload.request(i) for i in range(50)]
        r = httpx.post(server + "/predict", json={"inputs": [x.tolist() for x in items]})
        with torch.inference_mode():
            want = exported(workload.batch(items)).argmax(1)
        assert torch.equal(torch.tensor(r.json()["outputs"]).argmax(1), want)
    trial = optuna.load_study(study_name=STUDY, storage=url).trials[0]
    served = trial.user_attrs["served"]
    assert {k: served[k] for k in res} == res
    assert served["url"] == server and served["at"] and served["concurrency"] == 8
    assert "served" not in optuna.load_study(study_name=STUDY, storage=url).trials[1].user_attrs


def test_loadtest_without_cache_flags_prints_no_hit_rate(url):
    reg = Registry(url)
    v = reg.deploy(optuna.load_study(study_name=STUDY, storage=url), 1, "m")
    model, workload = reg.load_model("m", v.version)
    with model_server(model, workload, "m", v.version, report_cached=False) as server:
        result = _invoke("loadtest", "--url", server, "--study", STUDY, "--requests", "50",
                         "--storage", url, "--format", "json")
        res = json.loads(_ok(result))
        assert set(res) == JSON_KEYS and res["errors"] == 0, result.stderr
        table = _ok(_invoke("loadtest", "--url", server, "--study", STUDY,
                            "--requests", "20", "--concurrency", "2", "--storage", url))
        header, _, row = table.splitlines()
        assert row.split()[header.split().index("hit_rate")] == "-"


def test_loadtest_counts_errors_and_refuses_bad_input(url):
    from objectives import load_workload

    workload = load_workload("digits-cnn")

    class Broken(torch.nn.Module):  # answers with a 400 on every request
        def forward(self, x):
            raise RuntimeError("model is broken")

    with model_server(Broken(), workload) as server:
        res = json.loads(_ok(_invoke("loadtest", "--url", server, "--study", STUDY,
                                     "--requests", "30", "--storage", url,
                                     "--format", "json")))
        assert res["errors"] == 30 and res["mean_ms"] is None
        _user_error(_invoke("loadtest", "--url", server, "--study", STUDY, "--trial", "9",
                            "--storage", url), "no trial 9")
        _user_error(_invoke("loadtest", "--url", server, "--study", STUDY, "--requests", "0",
                            "--storage", url), "--requests")
    _user_error(_invoke("loadtest", "--url", "localhost:1", "--study", STUDY,
                        "--storage", url), "not a server URL")
    _user_error(_invoke("loadtest", "--url", server, "--study", STUDY, "--storage", url),
                "does not answer GET /healthz")
    assert "served" not in optuna.load_study(study_name=STUDY, storage=url).trials[0].user_attrs
