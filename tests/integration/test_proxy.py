"""Workers through `csearch proxy` (Optuna's gRPC storage proxy) in front of PostgreSQL:
one budget, heartbeats (a SIGKILLed worker's trial is failed and retried), reaping.
grpcio is in the `test` extra, so these run in CI."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from conftest import missing_service
from test_workers import (
    CLI,
    ROOT,
    _cleanup,
    _create,
    _env,
    _finish,
    _study,
    _worker,
    sigkill_one_worker_then_finish,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def proxied(postgres_url, study_name, tmp_path):
    """(grpc URL, direct URL, study name) with a proxy running for the test."""
    try:
        import grpc  # noqa: F401
    except ImportError:
        missing_service("grpcio (pip install csearch[grpc])")  # fails under .ci/run
    port = _free_port()
    proc = subprocess.Popen(
        [*CLI, "proxy", "--storage", postgres_url, "--port", str(port), "--pool-size", "3"],
        env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        yield f"grpc://127.0.0.1:{port}", postgres_url, study_name
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        _cleanup(postgres_url, study_name)


def test_workers_through_proxy_share_one_budget(proxied, tmp_path):
    grpc_url, url, name = proxied
    _create(grpc_url, name, 4, tmp_path)
    procs = [_worker(grpc_url, name, tmp_path) for _ in range(2)]
    codes = [_finish(p) for p in procs]
    assert [c for c, _ in codes] == [0, 0], codes
    trials = _study(url, name).get_trials()  # read straight from PostgreSQL
    finished = [t for t in trials if t.state.is_finished()]
    assert 4 <= len(finished) <= 5
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert len({t.user_attrs.get("worker") for t in finished}) == 2
    # The heartbeat went through the proxy too.
    assert all("csearch:heartbeat" in t.system_attrs for t in finished)


def test_sigkilled_worker_behind_proxy_is_failed_and_retried(proxied, tmp_path):
    grpc_url, url, name = proxied
    _create(grpc_url, name, 3, tmp_path, space="training")
    sigkill_one_worker_then_finish(grpc_url, url, name, tmp_path)


def test_proxy_without_grpcio_names_the_extra(monkeypatch):
    from search.cli import cli

    monkeypatch.setitem(sys.modules, "grpc", None)  # `import grpc` raises ImportError
    r = CliRunner().invoke(cli, ["proxy", "--storage", "sqlite:///x.db", "--port", "1"])
    assert r.exit_code == 2
    assert "pip install csearch[grpc]" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_grpc_url_without_a_proxy_is_one_clear_error(monkeypatch):
    pytest.importorskip("grpc")  # without it: the extra's error, tested above
    from search.errors import StorageError
    from search.storage import backends, open_storage

    monkeypatch.setattr(backends, "PROXY_WAIT", 0.5)
    with pytest.raises(StorageError, match="no storage proxy answers"):
        open_storage(f"grpc://127.0.0.1:{_free_port()}")
    with pytest.raises(StorageError, match="grpc://HOST:PORT"):
        open_storage("grpc://127.0.0.1/db")
