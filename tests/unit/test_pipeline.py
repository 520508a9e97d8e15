"""One trial's evaluation on the digits workload, end to end."""

from __future__ import annotations

import math

import pytest
import torch

from objectives import (
    METRICS,
    EarlyStopped,
    Reporter,
    build_structure,
    evaluate,
    unpack_state,
)
from objectives.prune import prunable_layers
from spaces import Config, PruneConfig, QuantConfig, TrainConfig

CPU = torch.device("cpu")
BASELINE = Config(train=TrainConfig(epochs=0))
COMPRESSED = Config(
    prune=PruneConfig(method="global", amount=0.9),
    quant=QuantConfig(method="lowbit", bits=3, group_size=0),
    train=TrainConfig(lr=2e-3, epochs=1),
)


class Recorder(Reporter):
    def __init__(self) -> None:
        self.stages: list[str] = []
        self.attrs: dict[str, object] = {}

    def stage(self, name: str) -> None:
        self.stages.append(name)

    def attr(self, key: str, value: object) -> None:
        self.attrs[key] = value


@pytest.fixture(scope="module")
def baseline(digits):
    return evaluate(digits, BASELINE, budget_mb=1.0, device=CPU, seed=0, is_baseline=True)


@pytest.fixture(scope="module")
def compressed(digits):
    rec = Recorder()
    ev = evaluate(digits, COMPRESSED, budget_mb=1.0, device=CPU, seed=0, reporter=rec)
    return ev, rec


def _reload_accuracy(workload, config, artifact) -> float:
    model = build_structure(workload, config, CPU)
    model.load_state_dict(unpack_state(artifact))
    return float(workload.evaluate(model))


def test_every_contract_metric_is_filled(baseline, compressed):
    for ev in (baseline, compressed[0]):
        for name in METRICS:
            assert name in ev.metrics, name
            assert math.isfinite(ev.metrics[name]), name
        assert 0 <= ev.metrics["accuracy"] <= 1
        assert 0 <= ev.metrics["cache_hit_rate"] <= 1
        assert ev.metrics["eval_seconds"] > 0
        assert ev.metrics["rejected_early"] == 0
        # The base model was timed on the trial's own batches, interleaved with it.
        m = ev.metrics
        assert m["speedup"] == pytest.approx(m["baseline_model_latency_ms"]
                                             / m["model_latency_ms"])
        assert m["latency_ms"] <= m["latency_p99_ms"] and m["latency_mean_ms"] > 0


def test_every_metric_has_a_unit():
    from objectives.metrics import EXTRA_METRICS, LM_METRICS, UNITS

    assert set(METRICS + EXTRA_METRICS + LM_METRICS) == set(UNITS)


def test_size_is_the_artifact_byte_count(baseline, compressed):
    for ev in (baseline, compressed[0]):
        assert ev.metrics["size_mb"] == len(ev.artifact) / 1e6


def test_memory_is_weights_plus_cache_plus_workspace(compressed):
    ev = compressed[0]
    cfg = COMPRESSED.serve
    expected = len(ev.artifact) + round(1e6 * cfg.cache_ratio) + round(1e6 * cfg.memory_ratio)
    assert ev.metrics["memory_mb"] == pytest.approx(expected / 1e6)
    assert ev.memory_margin_mb == pytest.approx(expected / 1e6 - 1.0)


def test_accuracy_drop_is_relative_to_the_base_model(digits, baseline, compressed):
    base_acc = float(digits.evaluate(digits.model))
    assert baseline.metrics["accuracy"] == pytest.approx(base_acc)
    assert baseline.metrics["accuracy_drop"] == pytest.approx(0.0, abs=1e-9)
    ev = compressed[0]
    assert ev.metrics["accuracy_drop"] == pytest.approx(base_acc - ev.metrics["accuracy"])


def test_global_pruning_and_3_bits_shrink_the_artifact_a_lot(baseline, compressed):
    ev = compressed[0]
    assert baseline.metrics["sparsity"] == 0
    assert ev.metrics["sparsity"] == pytest.approx(0.9, abs=0.005)
    assert baseline.metrics["size_mb"] / ev.metrics["size_mb"] > 15
    # ...and still classifies digits (one epoch of masked fine-tuning).
    assert ev.metrics["accuracy"] > 0.8


def test_the_baseline_is_exactly_as_fast_as_itself(baseline, compressed):
    """The study's baseline reports speedup 1.0, not a ratio of two noisy timings of the
    same model; a trial's speedup is still timed against the base model."""
    assert baseline.metrics["speedup"] == 1.0
    assert baseline.metrics["baseline_model_latency_ms"] == baseline.metrics["model_latency_ms"]
    ev = compressed[0]
    assert ev.metrics["speedup"] == pytest.approx(
        ev.metrics["baseline_model_latency_ms"] / ev.metrics["model_latency_ms"])


def test_quantization_zeros_are_not_counted_as_pruned(digits):
    """2-bit weights round many small weights to zero; without pruning, sparsity is 0."""
    config = Config(quant=QuantConfig(method="lowbit", bits=2, group_size=0),
                    train=TrainConfig(epochs=0))
    ev = evaluate(digits, config, budget_mb=1.0, device=CPU, seed=0)
    model = build_structure(digits, config, CPU)
    model.load_state_dict(unpack_state(ev.artifact))
    zeros = sum(int((m.weight == 0).sum()) for m in prunable_layers(model).values())
    assert zeros > 0  # the quantizer did make zeros...
    assert ev.metrics["sparsity"] == 0.0  # ...and none of them is a pruned weight


def test_pipeline_stages_run_in_order(compressed):
    stages = compressed[1].stages
    order = ["prune", "finetune", "quantize", "measure", "serve"]
    assert [s for s in stages if s in order] == order


def test_artifact_reloads_to_the_same_accuracy(digits, baseline, compressed):
    ev = compressed[0]
    state = unpack_state(ev.artifact)
    model = build_structure(digits, COMPRESSED, CPU)
    assert set(state) == set(model.state_dict())
    model.load_state_dict(state)
    # Masks held through fine-tuning: pruned weights are exactly zero in the artifact
    # (3-bit quantization may round a few more to zero; sparsity counts pruned ones only).
    zeros = sum(int((m.weight == 0).sum()) for m in prunable_layers(model).values())
    total = sum(m.weight.numel() for m in prunable_layers(model).values())
    assert zeros / total >= ev.metrics["sparsity"] - 1e-9
    assert float(digits.evaluate(model)) == pytest.approx(ev.metrics["accuracy"], abs=1e-6)
    assert _reload_accuracy(digits, BASELINE, baseline.artifact) == \
        pytest.approx(baseline.metrics["accuracy"], abs=1e-6)


def test_structured_trial_reloads_into_the_smaller_structure(digits):
    config = Config(prune=PruneConfig(method="structured", structured_ratio=0.5),
                    quant=QuantConfig(method="lowbit", bits=4, group_size=16),
                    train=TrainConfig(epochs=0))
    ev = evaluate(digits, config, budget_mb=1.0, device=CPU, seed=0)
    n_base = sum(t.numel() for t in digits.model.state_dict().values())
    n_pruned = sum(t.numel() for t in unpack_state(ev.artifact).values())
    assert n_pruned < 0.5 * n_base
    assert _reload_accuracy(digits, config, ev.artifact) == \
        pytest.approx(ev.metrics["accuracy"], abs=1e-6)


def test_weights_over_the_budget_are_rejected_before_training(digits):
    rec = Recorder()
    ev = evaluate(digits, Config(train=TrainConfig(epochs=3)), budget_mb=0.05, device=CPU,
                  seed=0, reporter=rec)
    assert "finetune" not in rec.stages
    assert "rejected" in rec.attrs
    assert ev.metrics["rejected_early"] == 1
    for name in METRICS:
        assert math.isfinite(ev.metrics[name]), name
    assert ev.memory_margin_mb > 0
    assert ev.metrics["memory_mb"] > 0.05
    # Untrained, unpruned and unquantized, the model is the base model.
    assert ev.metrics["accuracy"] == pytest.approx(float(digits.evaluate(digits.model)))


def test_hopeless_config_is_stopped_early(digits):
    config = Config(prune=PruneConfig(method="magnitude", threshold=0.5),
                    train=TrainConfig(lr=1e-3, epochs=3))
    rec = Recorder()
    with pytest.raises(EarlyStopped) as info:
        evaluate(digits, config, budget_mb=1.0, device=CPU, seed=0, accuracy_guard=0.01,
                 reporter=rec)
    assert "guard" in info.value.reason
    assert info.value.metrics["accuracy_drop"] > 0.2
    assert "serve" not in rec.stages


def test_no_guard_means_no_early_stop(digits):
    config = Config(prune=PruneConfig(method="magnitude", threshold=0.5),
                    train=TrainConfig(lr=1e-3, epochs=1))
    ev = evaluate(digits, config, budget_mb=1.0, device=CPU, seed=0)
    assert ev.metrics["accuracy_drop"] > 0.2  # hopeless, but measured in full


def test_same_seed_gives_the_same_artifact(digits, compressed):
    again = evaluate(digits, COMPRESSED, budget_mb=1.0, device=CPU, seed=0)
    # Same weights, same size. (Not byte-identical: safetensors writes its metadata keys
    # in hash-map order, which varies between calls.)
    a, b = unpack_state(again.artifact), unpack_state(compressed[0].artifact)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert len(again.artifact) == len(compressed[0].artifact)
    assert again.metrics["accuracy"] == compressed[0].metrics["accuracy"]
    assert again.metrics["cache_hit_rate"] == compressed[0].metrics["cache_hit_rate"]


def test_a_space_that_leaves_everything_out_leaves_the_model_as_it_is(digits, baseline):
    """A space with only `quant.method = ["none"]`: the parameters it leaves out train,
    prune and quantize nothing, so the model scores what the base model scores."""
    import optuna

    from spaces import parse_space

    space = parse_space('[params."quant.method"]\nchoices = ["none"]\n', name="only-none")
    config = space.sample(optuna.trial.FixedTrial({"quant.method": "none"}))
    ev = evaluate(digits, config, budget_mb=1.0, device=CPU, seed=0)
    assert ev.metrics["accuracy"] == baseline.metrics["accuracy"]
    assert ev.metrics["sparsity"] == baseline.metrics["sparsity"]
