"""Causal-LM workloads: a quickly trained tiny LM beats unigram; a trial through
`objectives.evaluate` measures accuracy with its KV format and serves by generation."""

from __future__ import annotations

import pytest
import torch

from objectives import evaluate
from objectives.lm.corpus import CharTokenizer, kjv_text, split_lines, windows
from objectives.lm.replay import GenerationSettings
from objectives.lm.workload import (
    LMData,
    make_lm_workload,
    next_token_metrics,
    unigram_metrics,
)
from objectives.metrics import LM_METRICS, METRICS
from objectives.workloads.tiny_lm import build_tiny_lm, train_lm
from spaces import Config


@pytest.fixture(scope="module")
def workload():
    text = kjv_text()
    tok = CharTokenizer.for_text(text)
    train, held = split_lines(text)
    train_ids = torch.tensor(tok.encode(train[:400_000]))
    held_ids = torch.tensor(tok.encode(held[:40_000]))
    torch.manual_seed(0)
    model = build_tiny_lm(tok.vocab_size, (64, 2, 4, 2, 128))
    train_lm(model, train_ids, steps=120, batch=16, seq=64, lr=5e-3)
    prompts = [tok.encode(line[:30]) for line in held.splitlines()[:12]]
    data = LMData(train=windows(train_ids, 65, 32, seed=1), heldout=windows(held_ids, 129, 24),
                  prompts=prompts, unigram=torch.bincount(train_ids, minlength=tok.vocab_size))
    return make_lm_workload("t-lm", model, data, batch_size=16, memory_budget_mb=2.0,
                            settings=GenerationSettings(new_tokens=4, n_requests=16,
                                                        concurrency=4))


def test_a_briefly_trained_char_lm_clearly_beats_unigram(workload):
    data = workload.extras["lm_data"]
    lm = next_token_metrics(workload.model, data.heldout, 16)
    uni = unigram_metrics(data.unigram, data.heldout)
    assert lm["accuracy"] > uni["accuracy"] + 0.1
    assert lm["perplexity"] < 0.8 * uni["perplexity"]


def test_int8_kv_changes_accuracy_only_a_little_and_is_measured(workload):
    data = workload.extras["lm_data"]
    a16 = next_token_metrics(workload.model, data.heldout, 16)
    a8 = next_token_metrics(workload.model, data.heldout, 8)
    assert a8["perplexity"] != a16["perplexity"]
    assert abs(a8["accuracy"] - a16["accuracy"]) < 0.02


def test_a_trial_reports_lm_metrics_with_its_kv_format(workload):
    cfg = Config.from_flat({"quant.method": "int8_dynamic", "quant.kv_bits": 8,
                            "prune.method": "global", "prune.amount": 0.3,
                            "train.epochs": 1, "train.lr": 1e-3, "train.kd_alpha": 0.5,
                            "serve.cache_ratio": 0.3, "serve.memory_ratio": 0.2})
    ev = evaluate(workload, cfg, budget_mb=2.0, seed=0)
    m = ev.metrics
    assert set(METRICS) - {"eval_seconds"} <= set(m) and set(LM_METRICS) <= set(m)
    assert m["ttft_ms"] > 0 and m["tpot_ms"] > 0 and m["throughput_tps"] > 0
    assert m["max_running"] >= 1 and 0 <= m["prefix_hit_rate"] < 1
    assert 0.2 < m["accuracy"] < 1 and m["perplexity"] > 1
    assert m["memory_mb"] == pytest.approx(m["size_mb"] + 2.0 * 0.5, abs=1e-6)
    assert ev.memory_margin_mb <= 0


def test_shipped_tiny_lm_weights_load_only_with_their_digest(tmp_path):
    """The committed weights file matches the digest in the code and fits the model; a
    copy with one byte changed, or no file at all, is refused (the workload then trains)."""
    from objectives.workloads.tiny_lm import TINY_LM_SHAPE, WEIGHTS_FILE, shipped_weights

    state = shipped_weights()
    assert state is not None and all(v.dtype == torch.float32 for v in state.values())
    vocab = state["lm.lm_head.weight"].shape[0]
    build_tiny_lm(vocab, TINY_LM_SHAPE).load_state_dict(state)  # strict: every tensor
    raw = bytearray(WEIGHTS_FILE.read_bytes())
    copy = tmp_path / "w.safetensors"
    copy.write_bytes(bytes(raw))
    assert shipped_weights(copy) is not None
    raw[-1] ^= 1
    copy.write_bytes(bytes(raw))
    assert shipped_weights(copy) is None
    assert shipped_weights(tmp_path / "missing.safetensors") is None
