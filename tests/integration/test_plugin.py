"""The plugin API end to end: a workload written only against DESIGN.md's plugin API
(`examples/wine_mlp.py`) runs, exports and reloads; bad references fail clearly."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

import objectives.workloads as registry
from objectives import Workload, WorkloadError, load_workload, resolve_factory

ROOT = Path(__file__).resolve().parents[2]
REF = "examples.wine_mlp:make_workload"


def csearch(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "search.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees its own process-level registry state."""
    monkeypatch.setattr(registry, "_loaded", {})
    monkeypatch.setattr(registry, "_allowed", set())


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory on sys.path for throwaway plugin modules."""
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _module(directory: Path, name: str, body: str) -> str:
    (directory / f"{name}.py").write_text(textwrap.dedent(body))
    sys.modules.pop(name, None)
    return name


def test_run_export_and_reload_reproduces_accuracy(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'p.db'}"
    r = csearch("run", "--workload", REF, "--space", "compression", "--trials", "4",
                "--study", "wine", "--storage", db, "--seed", "1")
    assert r.returncode == 0, r.stderr
    r = csearch("trials", "--study", "wine", "--storage", db, "--format", "json")
    assert r.returncode == 0, r.stderr
    trials = [t for t in json.loads(r.stdout) if t["state"] == "COMPLETE"]
    assert trials
    # Prefer a trial that really compressed, so the reload exercises the packed format.
    trial = max(trials, key=lambda t: (t["params"].get("quant.method", "none") != "none",
                                       t["params"].get("prune.method", "none") != "none"))
    out = tmp_path / "export"
    r = csearch("export", "--study", "wine", "--storage", db, "--trial", str(trial["number"]),
                "-o", str(out))
    assert r.returncode == 0, r.stderr
    meta = json.loads((out / "csearch.json").read_text())
    assert meta["workload"] == REF

    from search.export import load

    with pytest.raises(WorkloadError, match="plugin reference"):
        load(out)  # a reference read from a file is not imported unless named
    model = load(out, workload=REF)
    accuracy = load_workload(REF).evaluate(model)
    assert abs(accuracy - trial["metrics"]["accuracy"]) <= 0.01


def test_worker_needs_the_plugin_named(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'w.db'}"
    r = csearch("create", "--workload", REF, "--space", "compression", "--trials", "1",
                "--study", "w", "--storage", db)
    assert r.returncode == 0, r.stderr
    r = csearch("worker", "--study", "w", "--storage", db)
    assert r.returncode == 2
    assert "read from storage" in r.stderr and f"--workload {REF}" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = csearch("worker", "--study", "w", "--storage", db, "--workload", "examples.x:y")
    assert r.returncode == 2 and "differs" in r.stderr
    r = csearch("worker", "--study", "w", "--storage", db, "--workload", REF)
    assert r.returncode == 0, r.stderr


def test_module_not_found() -> None:
    with pytest.raises(WorkloadError, match=r"module 'no_such_pkg_4711\.mod' not found"):
        resolve_factory("no_such_pkg_4711.mod:make")


def test_attribute_not_found() -> None:
    with pytest.raises(WorkloadError, match=r"has no attribute 'nope'"):
        resolve_factory("examples.wine_mlp:nope")


def test_error_inside_the_users_module(plugin_dir: Path) -> None:
    name = _module(plugin_dir, "broken_plugin_4711", "raise RuntimeError('boom in user code')\n")
    with pytest.raises(WorkloadError,
                       match=r"error while importing .*RuntimeError: boom in user code"):
        resolve_factory(f"{name}:make")


def test_missing_dependency_of_the_users_module_is_not_module_not_found(plugin_dir: Path) -> None:
    name = _module(plugin_dir, "needs_dep_4711", "import no_such_dependency_4711\n")
    with pytest.raises(WorkloadError, match=r"error while importing .*no_such_dependency_4711"):
        resolve_factory(f"{name}:make")


def test_three_messages_differ(plugin_dir: Path) -> None:
    name = _module(plugin_dir, "broken2_4711", "raise ValueError('x')\n")
    messages = []
    for ref in ("no_such_pkg_4711:make", "examples.wine_mlp:nope", f"{name}:make"):
        with pytest.raises(WorkloadError) as e:
            resolve_factory(ref)
        messages.append(re.sub(r"'[^']*'", "", str(e.value)))
    assert len(set(messages)) == 3


def test_factory_raising_and_returning_the_wrong_type(plugin_dir: Path) -> None:
    name = _module(plugin_dir, "factories_4711", """
        def raises():
            raise KeyError("missing column")

        def wrong():
            return {"model": None}
    """)
    with pytest.raises(WorkloadError, match=r"raised KeyError"):
        load_workload(f"{name}:raises")
    with pytest.raises(WorkloadError, match=r"returned dict, not objectives\.Workload"):
        load_workload(f"{name}:wrong")


def test_cli_reports_a_bad_reference_in_one_line() -> None:
    r = csearch("run", "--workload", "no_such_pkg_4711:make", "--trials", "1",
                "--storage", "sqlite:///:memory:")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "not found" in r.stderr


def test_stored_reference_is_not_imported_unless_named(plugin_dir: Path) -> None:
    marker = plugin_dir / "imported"
    name = _module(plugin_dir, "sneaky_4711", f"""
        open({str(marker)!r}, "w").close()

        def make():
            return None
    """)
    with pytest.raises(WorkloadError, match="read from storage"):
        load_workload(f"{name}:make", stored=True)
    assert not marker.exists()
    registry.allow(f"{name}:make")
    with pytest.raises(WorkloadError, match="returned NoneType"):
        load_workload(f"{name}:make", stored=True)
    assert marker.exists()


def test_entry_point_group(monkeypatch: pytest.MonkeyPatch) -> None:
    ep = EntryPoint(name="wine", value=REF, group=registry.ENTRY_POINT_GROUP)

    def fake_entry_points(*, group: str) -> list[EntryPoint]:
        return [ep] if group == registry.ENTRY_POINT_GROUP else []

    monkeypatch.setattr(registry, "entry_points", fake_entry_points)
    assert "wine" in registry.list_workloads()
    # Installed entry points resolve even from storage: the operator installed them.
    w = load_workload("wine", stored=True)
    assert isinstance(w, Workload) and w.name == "wine-mlp"
