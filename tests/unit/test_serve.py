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


def _replay(small, act_bytes=None, weight_bytes=100_000, seed=0, budget=BUDGET, **serve):
    cfg = ServeConfig(**{"batch_size": 64, "memory_ratio": 0.25, **serve})
    return replay(small.model, small, cfg, budget_bytes=budget, weight_bytes=weight_bytes,
                  device=CPU, seed=seed, act_bytes=act_bytes)


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
