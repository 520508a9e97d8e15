"""The real server (`search.serving`): each test starts it on a free 127.0.0.1 port as a
subprocess and stops it. Models come from `serving_fake.FakeRegistry`, a file-backed
stand-in with the registry's methods."""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

import search.serving.overhead as overhead
from search.serving import RegistrySource, ServeError, serve_overhead_ms, start_server
from serving_fake import add_version, perturbed, promote

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
ENV = {"PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")])}
FAKE = "serving_fake:FakeRegistry"


@pytest.fixture(scope="module")
def registry(tmp_path_factory, digits):
    root = tmp_path_factory.mktemp("registry")
    models = {1: digits.model.eval(), 2: perturbed(digits.model, 1).eval()}
    for v, m in models.items():
        add_version(root, "digits", v, m)
    promote(root, "digits", 1)
    return root, models


def _expected(model, items):
    with torch.inference_mode():
        return model(torch.stack(items))


@pytest.fixture(scope="module")
def fixed(registry):
    root, _ = registry
    with start_server(RegistrySource(str(root), "digits", 2, registry=FAKE), env=ENV) as srv:
        yield srv


def test_predict_equals_the_models_own_outputs_and_repeats_hit_the_cache(fixed, registry,
                                                                        digits):
    model = registry[1][2]
    items = [digits.request(i) for i in range(50)]
    r = httpx.post(fixed.url + "/predict", json={"inputs": [x.tolist() for x in items]})
    assert r.status_code == 200
    body = r.json()
    assert body["version"] == 2 and body["cached"] == [False] * 50
    got = torch.tensor(body["outputs"])
    want = _expected(model, items)
    assert torch.equal(got.argmax(1), want.argmax(1))
    assert torch.allclose(got, want, atol=1e-4)
    again = httpx.post(fixed.url + "/predict", json={"inputs": [items[3].tolist()]}).json()
    assert again["cached"] == [True] and torch.allclose(torch.tensor(again["outputs"][0]),
                                                        want[3], atol=1e-4)


@pytest.mark.parametrize("body", [
    b"{not json", b'{"inputs": []}', b'{"inputs": [[1, 2, 3]]}', b'{"other": 1}', b"[1, 2]",
    b'{"inputs": [[[["a"]]]]}', b'{"inputs": [[[1, 2], [3]]]}'])
def test_bad_requests_get_a_4xx_json_error_and_the_server_keeps_answering(fixed, digits, body):
    r = httpx.post(fixed.url + "/predict", content=body,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400
    err = r.json()["error"]  # OpenAI's error object, whatever went wrong
    assert isinstance(err["message"], str) and err["type"] == "invalid_request_error"
    ok = httpx.post(fixed.url + "/predict", json={"inputs": [digits.request(0).tolist()]})
    assert ok.status_code == 200 and len(ok.json()["outputs"]) == 1


def test_a_bad_request_batched_with_good_ones_fails_alone(fixed, digits):
    good = {"inputs": [digits.request(7).tolist()]}
    bad = {"inputs": [[1.0, 2.0]]}
    with httpx.Client() as c:
        codes: list[int] = []

        def send(body: dict) -> None:
            codes.append(c.post(fixed.url + "/predict", json=body).status_code)

        threads = [threading.Thread(target=send, args=(b,)) for b in [good, bad] * 8]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(codes) == [200] * 8 + [400] * 8


def test_healthz_version_and_metrics(fixed, digits):
    assert httpx.get(fixed.url + "/healthz").status_code == 200
    assert httpx.get(fixed.url + "/version").json() == {"name": "digits", "version": 2}
    httpx.post(fixed.url + "/predict", json={"inputs": [digits.request(1).tolist()] * 2})
    text = httpx.get(fixed.url + "/metrics").text
    for name in ("csearch_serve_requests_total", "csearch_serve_request_latency_seconds_bucket",
                 "csearch_serve_cache_hits_total", "csearch_serve_batch_size_bucket"):
        assert name in text
    assert "csearch_serve_model_version 2.0" in text
    hits = [ln for ln in text.splitlines() if ln.startswith("csearch_serve_cache_hits_total")]
    assert float(hits[0].split()[-1]) >= 1  # the repeated item within one request


def test_unknown_version_and_missing_alias_are_one_line_errors(registry, tmp_path):
    root, _ = registry
    with pytest.raises(ServeError, match="no version 9"):
        start_server(RegistrySource(str(root), "digits", 9, registry=FAKE), env=ENV)
    (tmp_path / "empty.json").write_text('{"versions": {}}')
    with pytest.raises(ServeError, match="no production version"):
        start_server(RegistrySource(str(tmp_path), "empty", registry=FAKE), env=ENV)


def _wait_version(url: str, version: int, limit: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if httpx.get(url + "/version").json()["version"] == version:
            return time.monotonic() - t0
        time.sleep(0.1)
    raise AssertionError(f"/version did not become {version} within {limit} s")


def test_promote_and_rollback_swap_without_a_failed_request(registry, digits):
    root, models = registry
    promote(root, "digits", 1)
    items = [digits.request(i) for i in range(40)]
    want = {v: _expected(m, items) for v, m in models.items()}
    failures: list[str] = []
    seen: list[int] = []
    stop = threading.Event()

    def client(k: int) -> None:
        with httpx.Client(timeout=30) as c:
            i = k
            while not stop.is_set():
                i = (i + 7) % len(items)
                try:
                    r = c.post(srv.url + "/predict", json={"inputs": [items[i].tolist()]})
                    body = r.json()
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {body}")
                        continue
                    v = body["version"]
                    seen.append(v)
                    if not torch.allclose(torch.tensor(body["outputs"][0]), want[v][i],
                                          atol=1e-4):
                        failures.append(f"outputs of request {i} are not version {v}'s")
                except Exception as e:  # noqa: BLE001 - any failure counts
                    failures.append(repr(e))

    with start_server(RegistrySource(str(root), "digits", registry=FAKE), poll_s=0.5,
                      env=ENV) as srv:
        assert httpx.get(srv.url + "/version").json()["version"] == 1
        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.5)
            promote(root, "digits", 2)
            _wait_version(srv.url, 2, 15)
            time.sleep(0.5)
            promote(root, "digits", 1)  # what `csearch rollback` does to the alias
            _wait_version(srv.url, 1, 15)
            time.sleep(0.5)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert not failures, failures[:3]
        assert 2 in seen and seen[-1] == 1 and len(seen) > 20
        metrics = httpx.get(srv.url + "/metrics").text
        assert "csearch_serve_model_swaps_total 2.0" in metrics


def test_overhead_is_measured_once_then_read_from_the_cache(tmp_path, monkeypatch, digits):
    monkeypatch.setattr(overhead, "cache_dir", lambda: tmp_path)
    monkeypatch.setattr(overhead, "TIMED", 40)
    ms = serve_overhead_ms(digits, "cpu")
    assert math.isfinite(ms) and ms > 0
    assert (tmp_path / "serve_overhead.json").is_file()

    def no_server(*_a, **_k):
        raise AssertionError("a cached overhead must not start a server")

    monkeypatch.setattr(overhead, "start_server", no_server)
    assert serve_overhead_ms(digits, "cpu") == ms


@pytest.mark.parametrize("args, message", [
    (["--port", "80"], "--port 80"), (["--host", "10.1.2.3"], "--host '10.1.2.3'")])
def test_serve_command_refuses_a_bad_host_or_port_in_one_line(tmp_path, args, message):
    from click.testing import CliRunner

    from search.cli import cli

    r = CliRunner().invoke(cli, ["serve", "--name", "m", "--storage",
                                 f"sqlite:///{tmp_path}/s.db", *args])
    assert r.exit_code == 2
    assert message in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "s.db").exists()
