"""A server that protects itself (issue 26): limits on items, body bytes and request time,
non-finite inputs, one error schema, fairness to small requests, and a graceful SIGTERM.
Each test starts the real server on a free 127.0.0.1 port and stops it."""

from __future__ import annotations

import json
import math
import signal
import threading
import time

import httpx
import numpy as np
import pytest

from search.serving import Limits, WorkloadSource, start_server

# digits' base model; max batch 8 (0.3 of 1 MB holds more), no cache: every item computes.
SERVE = {"batch_size": 8, "threads": 1, "cache_ratio": 0.0, "memory_ratio": 0.3,
         "memory_budget_mb": 1.0}
SOURCE = WorkloadSource("digits-cnn", SERVE)


def _items(n: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 8, 8)).round(4).tolist()


def _is_error(r: httpx.Response, status: int) -> dict:
    """The one error schema (OpenAI's error object), with `status`."""
    assert r.status_code == status, r.text[:300]
    body = r.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    return err


def _metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def _batches(url: str) -> float:
    return _metric(url, "csearch_serve_batch_size_count")


@pytest.fixture(scope="module")
def server():
    with start_server(SOURCE) as srv:
        yield srv


def test_a_100000_item_request_is_refused_with_413_naming_the_limit_at_once(server):
    body = json.dumps({"inputs": _items(1) * 100_000}).encode()
    t0 = time.perf_counter()
    r = httpx.post(server.url + "/predict", content=body, timeout=30)
    elapsed = time.perf_counter() - t0
    err = _is_error(r, 413)
    assert "max_body_bytes" in err["message"] and str(Limits().max_body_bytes) in err["message"]
    assert elapsed < 1.0  # refused on its Content-Length, before the body is parsed
    assert httpx.post(server.url + "/predict", json={"inputs": _items(1)}).status_code == 200


def test_more_items_than_the_limit_is_a_413_naming_it(server):
    n = Limits().max_items + 1
    err = _is_error(httpx.post(server.url + "/predict", json={"inputs": _items(1) * n},
                               timeout=30), 413)
    assert "max_items" in err["message"] and str(n) in err["message"]


def test_a_body_without_content_length_is_counted_as_it_arrives(tmp_path):
    limits = Limits(max_body_bytes=10_000)
    body = json.dumps({"inputs": _items(100)}).encode()

    def chunks():
        for i in range(0, len(body), 1000):
            yield body[i:i + 1000]

    with start_server(SOURCE, limits=limits) as srv:
        err = _is_error(httpx.post(srv.url + "/predict", content=chunks()), 413)
        assert "10000 bytes" in err["message"]
        small = json.dumps({"inputs": _items(2)}).encode()
        assert httpx.post(srv.url + "/predict", content=iter([small])).status_code == 200


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_inputs_get_a_400(server, value):
    item = _items(1)[0]
    item[0][3][4] = value
    body = json.dumps({"inputs": [_items(1)[0], item]}).encode()  # Python writes NaN, Infinity
    err = _is_error(httpx.post(server.url + "/predict", content=body), 400)
    assert "inputs[1]" in err["message"] and "finite" in err["message"]


@pytest.mark.parametrize("method, path, body, status", [
    ("POST", "/predict", b"{not json", 400),
    ("POST", "/predict", b'{"inputs": [[1.0, 2.0]]}', 400),  # a bad shape
    ("POST", "/predict", b'{"inputs": "abc"}', 400),
    ("POST", "/predict", b'{"inputs": [[[["a"]]]]}', 400),
    ("GET", "/predict", None, 405),
    ("GET", "/no-such-route", None, 404)])
def test_every_error_has_one_schema(server, method, path, body, status):
    r = httpx.request(method, server.url + path, content=body,
                      headers={"content-type": "application/json"})
    _is_error(r, status)


def test_a_small_request_during_a_large_one_waits_for_one_batch_not_the_large_request(server):
    large = _items(Limits().max_items - 96, seed=1)  # ~500 batches of 8, no cache
    done: dict[str, float] = {}

    def send_large() -> None:
        r = httpx.post(server.url + "/predict", json={"inputs": large}, timeout=120)
        done["large"] = time.perf_counter()
        done["large_status"] = r.status_code

    before = _batches(server.url)
    t = threading.Thread(target=send_large)
    t.start()
    deadline = time.monotonic() + 60
    while _batches(server.url) == before and time.monotonic() < deadline:
        time.sleep(0.01)
    t0 = time.perf_counter()
    r = httpx.post(server.url + "/predict", json={"inputs": _items(1, seed=2)}, timeout=30)
    small = time.perf_counter()
    t.join()
    assert r.status_code == 200 and done["large_status"] == 200
    # What a user relies on: the small request is answered between the large one's
    # batches, not after it. The time bound is loose so a loaded CI machine cannot fail
    # it; the figure itself (0.40-0.41 s for a 4,000-item request) is in RESULTS.md.
    assert small < done["large"]
    assert small - t0 < 0.25 * (done["large"] - t0) or small - t0 < 1.0


def test_a_request_over_the_time_limit_is_a_408_naming_it_and_the_server_keeps_serving():
    with start_server(SOURCE, limits=Limits(timeout_s=0.05)) as srv:
        r = httpx.post(srv.url + "/predict", json={"inputs": _items(4000, seed=3)}, timeout=60)
        err = _is_error(r, 408)
        assert "timeout_s" in err["message"] and "0.05 s" in err["message"]
        assert httpx.get(srv.url + "/healthz").status_code == 200


def test_sigterm_answers_the_requests_in_flight_and_exits_0_without_a_traceback():
    srv = start_server(SOURCE)
    try:
        codes: list[int] = []

        def send(seed: int) -> None:
            r = httpx.post(srv.url + "/predict", json={"inputs": _items(1500, seed=seed)},
                           timeout=120)
            codes.append(r.status_code)

        threads = [threading.Thread(target=send, args=(s,)) for s in range(3)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60  # all three are being answered
        while (_metric(srv.url, "csearch_serve_requests_in_flight") < 3
               or _batches(srv.url) == 0) and time.monotonic() < deadline:
            time.sleep(0.01)
        srv.process.send_signal(signal.SIGTERM)
        for t in threads:
            t.join()
        assert srv.process.wait(60) == 0
        assert codes == [200, 200, 200]
        err = srv.stderr()
        assert "Traceback" not in err and "Error" not in err, err
    finally:
        srv.stop()
