"""Serve replay: Zipf trace, LRU cache, batch sizing from the memory split, feasibility."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from objectives.serve import (
    LRUCache,
    activation_bytes_per_sample,
    max_batch_for,
    replay,
    zipf_trace,
)
from spaces import ServeConfig

CPU = torch.device("cpu")
BUDGET = 1_000_000  # bytes


@pytest.fixture(scope="module")
def small(digits):
    """The digits workload with a shorter trace (same model, same request pool)."""
    return dataclasses.replace(digits, n_requests=800, extras={})


@pytest.fixture(scope="module")
def act_bytes(small):
    return activation_bytes_per_sample(small.model, small.example_inputs(), CPU)


def _replay(small, act_bytes=None, weight_bytes=100_000, seed=0, budget=BUDGET,
            serve_overhead_ms=0.0, **serve):
    cfg = ServeConfig(**{"batch_size": 64, "memory_ratio": 0.25, **serve})
    return replay(small.model, small, cfg, budget_bytes=budget, weight_bytes=weight_bytes,
                  device=CPU, seed=seed, act_bytes=act_bytes,
                  serve_overhead_ms=serve_overhead_ms)


# --- trace and cache --------------------------------------------------------------------

def test_zipf_trace_is_deterministic_and_skewed():
    a = zipf_trace(1000, 5000, 1.1, seed=3)
    assert np.array_equal(a, zipf_trace(1000, 5000, 1.1, seed=3))
    assert not np.array_equal(a, zipf_trace(1000, 5000, 1.1, seed=4))
    assert a.min() >= 0 and a.max() < 1000 and len(a) == 5000
    counts = np.bincount(a, minlength=1000)
    assert counts.max() > 50 * np.median(counts)
    flat = np.bincount(zipf_trace(1000, 5000, 0.0, seed=3), minlength=1000)
    assert flat.max() < 5 * max(np.median(flat), 1)  # skew 0 is uniform
    assert counts.max() > 5 * flat.max()


def test_lru_cache_respects_byte_capacity_and_evicts_least_recent():
    cache = LRUCache(100)
    cache.put(b"a", "A", 40)
    cache.put(b"b", "B", 40)
    assert cache.get(b"a") == "A"  # a is now the most recent
    cache.put(b"c", "C", 40)  # over capacity: b (least recent) goes
    assert cache.get(b"b") is None
    assert cache.get(b"a") == "A" and cache.get(b"c") == "C"
    assert cache.used == 80 <= cache.capacity and len(cache) == 2
    cache.put(b"big", "X", 101)  # larger than the whole cache: not stored, nothing evicted
    assert cache.get(b"big") is None and len(cache) == 2
    cache.put(b"d", "D", 100)  # evicts everything else
    assert len(cache) == 1 and cache.used == 100 and cache.get(b"d") == "D"


def test_zero_capacity_cache_stores_nothing():
    cache = LRUCache(0)
    cache.put(b"a", 1, 1)
    assert cache.get(b"a") is None and cache.used == 0


def test_max_batch_for():
    assert max_batch_for(10_000, 1_000, 64) == 10
    assert max_batch_for(10_000, 1_000, 4) == 4  # capped by serve.batch_size
    assert max_batch_for(999, 1_000, 64) == 0  # not even one sample fits
    assert max_batch_for(1_000_000, 1_000, 64) == 64


# --- replay on digits -------------------------------------------------------------------

def test_activation_bytes_are_measured(small, act_bytes):
    # DigitsCNN: conv1 16x8x8, relu, conv2 32x8x8, relu, fc1 256, relu, fc2 10 (fp32).
    assert act_bytes >= 4 * (16 * 64 + 32 * 64 + 256 + 10)


def test_hit_rate_is_zero_without_cache_and_grows_with_cache_ratio(small, act_bytes):
    rates = [_replay(small, act_bytes, cache_ratio=b).metrics["cache_hit_rate"]
             for b in (0.0, 0.01, 0.05, 0.3)]
    assert rates[0] == 0.0
    assert rates[1] > 0
    assert rates[1] < rates[2] < rates[3]
    # No cache beats "each distinct request misses once".
    trace = zipf_trace(small.n_distinct_requests, small.n_requests, small.zipf_skew, 0)
    assert rates[3] <= 1 - len(set(trace.tolist())) / len(trace)


def test_only_repeated_requests_hit(small, act_bytes):
    r = _replay(small, act_bytes, cache_ratio=0.3)
    trace = zipf_trace(small.n_distinct_requests, small.n_requests, small.zipf_skew, 0)
    seen: set[int] = set()
    for pos, req in enumerate(trace.tolist()):
        if r.hits[pos]:
            assert req in seen, pos
        seen.add(req)


def test_max_batch_follows_memory_ratio(small, act_bytes):
    seen = []
    for gamma in (0.03, 0.06, 0.12):  # 2, 4, 8 samples of ~13 kB
        r = _replay(small, act_bytes, memory_ratio=gamma, batch_size=64)
        expected = min(64, round(BUDGET * gamma) // act_bytes)
        assert r.max_batch == expected == max_batch_for(round(BUDGET * gamma), act_bytes, 64)
        assert r.metrics["max_batch"] == expected
        assert max(len(b) for b in r.batches) == expected  # 64 cold clients fill a batch
        seen.append(r.max_batch)
    assert seen[0] < seen[1] < seen[2]
    capped = _replay(small, act_bytes, memory_ratio=0.5, batch_size=4)
    assert capped.max_batch == 4 and max(len(b) for b in capped.batches) == 4


def test_every_miss_is_served_once_in_a_batch(small, act_bytes):
    r = _replay(small, act_bytes, cache_ratio=0.05)
    served = [p for b in r.batches for p in b]
    misses = [i for i, hit in enumerate(r.hits) if not hit]
    assert sorted(served) == misses
    assert len(r.hits) == small.n_requests


def test_replay_is_deterministic_for_a_seed(small, act_bytes):
    a = _replay(small, act_bytes, cache_ratio=0.05, memory_ratio=0.06, seed=7)
    b = _replay(small, act_bytes, cache_ratio=0.05, memory_ratio=0.06, seed=7)
    assert a.hits == b.hits and a.batches == b.batches and a.max_batch == b.max_batch
    c = _replay(small, act_bytes, cache_ratio=0.05, memory_ratio=0.06, seed=8)
    assert c.hits != a.hits


def test_all_serve_metrics_are_measured(small, act_bytes):
    m = _replay(small, act_bytes, cache_ratio=0.1).metrics
    for k in ("latency_ms", "latency_p99_ms", "throughput_rps", "cache_hit_rate", "memory_mb"):
        assert np.isfinite(m[k]), k
    assert 0 < m["latency_ms"] <= m["latency_p99_ms"]
    assert m["throughput_rps"] > 0


def test_feasible_split_has_non_positive_margin(small, act_bytes):
    r = _replay(small, act_bytes, weight_bytes=300_000, cache_ratio=0.3, memory_ratio=0.3)
    assert r.feasible_margin_mb <= 0
    assert r.metrics["memory_mb"] == pytest.approx((300_000 + 300_000 + 300_000) / 1e6)


def test_infeasible_when_weights_cache_and_workspace_exceed_the_budget(small, act_bytes):
    r = _replay(small, act_bytes, weight_bytes=600_000, cache_ratio=0.3, memory_ratio=0.25)
    memory = 600_000 + 300_000 + 250_000
    assert r.metrics["memory_mb"] == pytest.approx(memory / 1e6)
    assert r.feasible_margin_mb == pytest.approx((memory - BUDGET) / 1e6)
    assert r.feasible_margin_mb > 0
    assert 0 <= r.metrics["cache_hit_rate"] <= 1  # still replayed, so all metrics exist


def test_infeasible_when_one_sample_does_not_fit_the_workspace(small, act_bytes):
    gamma = (act_bytes // 2) / BUDGET
    r = _replay(small, act_bytes, weight_bytes=1000, memory_ratio=gamma)
    assert r.max_batch == 0
    assert r.feasible_margin_mb > 0
    assert max(len(b) for b in r.batches) == 1  # replayed one by one all the same


# --- per-request overhead, mean vs median, model latency, interleaved baseline ----------
# Forward times come from `objectives.timing`; these tests swap in fixed times, so what
# they assert holds by construction, whatever the machine's speed.

def _fixed_times(monkeypatch, per_input_s: dict[int, float]):
    """Make model m's median forward time `per_input_s[m]` seconds for every batch."""
    from objectives import serve

    def fake(models, inputs, device):
        return [[per_input_s[m]] * len(inputs) for m in range(len(models))]

    monkeypatch.setattr(serve, "time_interleaved", fake)
    monkeypatch.setattr(serve, "warm_up", lambda *a, **k: 0)


def test_every_request_costs_at_least_the_server_overhead(small, act_bytes, monkeypatch):
    _fixed_times(monkeypatch, {0: 0.002})
    free = _replay(small, act_bytes, cache_ratio=0.3)
    paid = _replay(small, act_bytes, cache_ratio=0.3, serve_overhead_ms=1.5)
    assert free.metrics["cache_hit_rate"] > 0.5 and free.hits == paid.hits
    m, m0 = paid.metrics, free.metrics
    assert m0["latency_ms"] < 0.1 <= 1.5 <= m["latency_ms"]  # the median request is a hit
    assert m["latency_mean_ms"] >= 1.5 and m["latency_p99_ms"] >= 1.5
    assert m["latency_mean_ms"] > m0["latency_mean_ms"]
    assert m["throughput_rps"] < m0["throughput_rps"]  # the closed-loop clients feel it
    assert m["model_latency_ms"] == m0["model_latency_ms"]  # the model is no slower


def test_timeline_charges_overhead_to_hits_and_misses_one_request_at_a_time():
    from objectives.serve import _Plan, _timeline

    # Two clients; round 1: client 0 misses (pos 0), client 1 hits (pos 1) then misses
    # (pos 2), one batch of both misses; round 2: client 0 hits (pos 3).
    plan = _Plan(hits=[False, True, False, True], lookup_s=[0.0, 1e-6, 0.0, 2e-6],
                 client=[0, 1, 1, 0],
                 rounds=[([[0], [1, 2]], [(0, 2)]), ([[3], []], [])])
    lat, makespan = _timeline(plan, [0.010], overhead_s=0.001, clients=2)
    # Both clients send at 0; the front end takes pos 0, then pos 1 (which waits for it).
    assert lat[1] == pytest.approx(0.002 + 1e-6)
    # pos 2 is sent when pos 1 is answered; the batch starts once it is through the front.
    start = 0.002 + 1e-6 + 0.001
    assert lat[0] == pytest.approx(start + 0.010)
    assert lat[2] == pytest.approx(start + 0.010 - (0.002 + 1e-6))
    assert lat[3] == pytest.approx(0.001 + 2e-6)  # alone at the front end
    assert min(lat) >= 0.001
    assert makespan == pytest.approx(start + 0.010 + 0.001 + 2e-6)


def test_many_clients_queue_for_the_front_end_as_at_the_real_server(small, act_bytes,
                                                                      monkeypatch):
    """The real server answers at most about 1 / overhead requests a second, so with 64
    clients a request waits for the others' overhead (Little's law: mean ~ 64 x overhead),
    whatever the model's speed."""
    _fixed_times(monkeypatch, {0: 1e-5})
    m = _replay(small, act_bytes, cache_ratio=0.3, serve_overhead_ms=0.5).metrics
    assert small.concurrency == 64
    assert 0.9 * 2000 <= m["throughput_rps"] <= 2000 * 1.001
    assert m["latency_mean_ms"] == pytest.approx(64 * 0.5, rel=0.2)


def test_busy_shares_name_the_bottleneck_stage(small, act_bytes, monkeypatch):
    """The replay says which stage was busier: the front end when every request pays a
    large overhead and batches are quick; the model when batches are slow."""
    _fixed_times(monkeypatch, {0: 1e-5})
    front = _replay(small, act_bytes, cache_ratio=0.3, serve_overhead_ms=0.5).metrics
    assert front["frontend_busy_share"] > 0.9 > front["model_busy_share"]
    _fixed_times(monkeypatch, {0: 0.05})
    model = _replay(small, act_bytes, cache_ratio=0.3, serve_overhead_ms=0.01).metrics
    assert model["model_busy_share"] > 0.9 > model["frontend_busy_share"]
    free = _replay(small, act_bytes, cache_ratio=0.3).metrics
    assert free["frontend_busy_share"] == 0.0


def test_mean_moves_with_the_model_where_the_front_end_is_not_saturated(small, act_bytes,
                                                                        monkeypatch):
    few = dataclasses.replace(small, concurrency=4)
    _fixed_times(monkeypatch, {0: 0.001})
    fast = _replay(few, act_bytes, cache_ratio=0.3, serve_overhead_ms=0.5).metrics
    _fixed_times(monkeypatch, {0: 0.004})
    slow = _replay(few, act_bytes, cache_ratio=0.3, serve_overhead_ms=0.5).metrics
    assert fast["cache_hit_rate"] == slow["cache_hit_rate"] > 0.5
    assert slow["latency_mean_ms"] > 1.3 * fast["latency_mean_ms"]
    assert slow["model_latency_ms"] == pytest.approx(4 * fast["model_latency_ms"])


def test_model_latency_is_forward_time_per_miss_whatever_the_cache(small, act_bytes,
                                                                   monkeypatch):
    _fixed_times(monkeypatch, {0: 0.003})
    rows = []
    for beta in (0.0, 0.05, 0.3):
        r = _replay(small, act_bytes, cache_ratio=beta, batch_size=1)  # one miss a batch
        rows.append((r.metrics["cache_hit_rate"], r.metrics["latency_mean_ms"],
                     r.metrics["model_latency_ms"]))
    assert rows[0][0] < rows[1][0] < rows[2][0]
    assert rows[0][1] > rows[1][1] > rows[2][1]  # the cache shortens the mean
    assert all(m == pytest.approx(3.0) for _, _, m in rows)  # but not the model's time
    # Batched: the batch's time is shared by the misses it serves.
    r = _replay(small, act_bytes, cache_ratio=0.3, batch_size=8)
    misses = r.hits.count(False)
    assert r.metrics["model_latency_ms"] == pytest.approx(3.0 * len(r.batches) / misses)


def test_interleaved_baseline_gives_speedup_on_the_same_batches(small, act_bytes,
                                                                monkeypatch):
    assert "speedup" not in _replay(small, act_bytes).metrics  # only with a baseline
    _fixed_times(monkeypatch, {0: 0.001, 1: 0.003})
    cfg = ServeConfig(batch_size=64, memory_ratio=0.25, cache_ratio=0.1)
    r = replay(small.model, small, cfg, budget_bytes=BUDGET, weight_bytes=100_000,
               device=CPU, act_bytes=act_bytes, baseline=small.model)
    m = r.metrics
    assert m["baseline_model_latency_ms"] == pytest.approx(3 * m["model_latency_ms"])
    assert m["speedup"] == pytest.approx(3.0)


def test_timing_alternates_models_and_takes_medians(monkeypatch):
    from objectives import timing

    calls = []
    durations = {"a": iter([5.0] + [1.0] * 100), "b": iter([2.0] * 100)}  # a: one outlier

    def fake_forward(model, x, device):
        calls.append((model, x))
        return None, next(durations[model])

    monkeypatch.setattr(timing, "forward", fake_forward)
    out = timing.time_interleaved(["a", "b"], [0], CPU)
    assert out == [[1.0], [2.0]]  # the outlier is not in the median
    rounds = len(calls) // 2
    assert timing.MIN_ROUNDS <= rounds <= timing.MAX_ROUNDS
    assert [m for m, _ in calls[:4]] == ["a", "b", "b", "a"]  # A B, then B A

    noisy = iter(range(1, 10_000))  # never settles: stops at the bound
    monkeypatch.setattr(timing, "forward", lambda *_: (None, float(next(noisy))))
    timing.time_interleaved(["a"], [0, 1], CPU)
    assert next(noisy) == 2 * timing.MAX_ROUNDS + 1


def test_warm_up_runs_every_model_for_its_time_and_at_least_three_times():
    from objectives import timing

    counts = {"a": 0, "b": 0}

    def model(name):
        def run(x):
            counts[name] += 1
            return x
        return run

    passes = timing.warm_up([model("a"), model("b")], [torch.zeros(1)], CPU, seconds=0.0)
    assert passes == 3 and counts == {"a": 3, "b": 3}


def test_batches_take_misses_in_the_order_they_arrive(small):
    """A miss after fewer of its client's requests in a round reaches the batcher first
    (every request costs the server overhead), so no batch waits for a later one."""
    from objectives.serve import LRUCache, _plan, _request_keys

    keys = _request_keys(small)
    trace = zipf_trace(len(keys), small.n_requests, small.zipf_skew, 0)
    plan, inputs = _plan(small.model, small, trace, keys, LRUCache(300_000), 16, CPU)
    spread = False
    for sends, batches in plan.rounds:
        order = [len(sends[plan.client[p]]) for b in batches for p in b]
        assert order == sorted(order)
        spread |= len(set(order)) > 1
    assert spread  # some rounds mix misses after different numbers of hits
    assert len(inputs) == sum(len(b) for _, b in plan.rounds)
