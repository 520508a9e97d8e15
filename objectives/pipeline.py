"""One trial's evaluation: prune -> fine-tune -> quantize -> pack -> measure -> serve.

Everything here is measured on the real model: accuracy on held-out data, size as the
byte count of the packed artifact, latency and throughput from the serve replay.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from spaces import Config, QuantConfig

from ._device import to_device
from .errors import EvaluationError
from .metrics import METRICS
from .pack import dense_bound, pack_state
from .prune import apply_masks, masks_for, prunable_layers, structured_prune
from .groups import layer_plans
from .pack import effective_bits
from .qat import attach_fake_quant, detach_fake_quant
from .quantize import apply_runtime, embedding_layers, quantize_weights
from .serve import activation_bytes_per_sample, replay
from .split import no_split_reason
from .train import finetune, planned_steps
from .early_stop import KNOWN_BEFORE_RECOVERY, RecoveryWatch
from .workload import Workload

__all__ = ["Reporter", "Evaluation", "evaluate", "base_accuracy", "build_structure", "METRICS"]



class Reporter:
    """What a trial may tell the outside world; `search` subclasses it. No optuna here."""

    def stage(self, name: str) -> None:  # noqa: D401 - a progress hook
        """Called as each stage of the pipeline starts."""

    def attr(self, key: str, value: object) -> None:
        """Store a piece of diagnostic information on the trial."""

    def front_objectives(self) -> tuple[str, ...] | None:
        """The study's objective metrics, when it can tell a trial it is dominated."""
        return None

    def dominated(self, known: dict[str, float]) -> str | None:
        """Which front trial dominates these (optimistic) metrics, or None."""
        return None


@dataclass
class Evaluation:
    metrics: dict[str, float]
    artifact: bytes
    memory_margin_mb: float  # <= 0: packed weights + cache + workspace fit the budget
    # What a generation replay produced for a few prompts (`GenerationResult.samples`).
    samples: list[dict[str, Any]] | None = None
    # The split served with when the sampled one broke the budget and this one fits:
    # {"cache_ratio", "memory_ratio", "sampled": {...}}; None: served as sampled.
    serve_split: dict[str, Any] | None = None


def base_accuracy(workload: Workload, guard: float | None = None) -> float:
    """Accuracy of the uncompressed model, once per process. A workload measured on a
    subset of held-out windows (causal LMs) first sizes that subset to the study's
    `guard` (its standard error below guard / 2), and every later evaluation in the
    process uses the same windows, so an accuracy drop compares like with like."""
    cache = workload._cache
    if "base_accuracy" not in cache:
        subset = workload.extras.get("heldout_subset")
        if subset is not None and guard is not None:
            cache["base_measured"] = subset.settle(workload.model, guard)
            cache["base_accuracy"] = float(cache["base_measured"]["accuracy"])
        else:
            cache["base_accuracy"] = float(workload.evaluate(workload.model))
    return cache["base_accuracy"]


def _baseline_model(workload: Workload, device: torch.device) -> nn.Module:
    """The uncompressed base model on `device`, for interleaved timing; once per process."""
    if device.type == "cpu":
        return workload.model
    key = f"_baseline_on_{device}"
    if key not in workload.extras:
        workload.extras[key] = copy.deepcopy(workload.model).to(device).eval()
    return workload.extras[key]


def _prunable_count(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in prunable_layers(model).values())


def build_structure(workload: Workload, config: Config, device: torch.device) -> nn.Module:
    """A copy of the base model with the config's structural changes (removed channels).

    Deterministic given the base weights, so `export.load` rebuilds the same shapes.
    """
    model = copy.deepcopy(workload.model).to(device)
    if config.prune.method == "structured" and config.prune.structured_ratio > 0:
        model = structured_prune(
            model, config.prune.structured_ratio, to_device(workload.example_inputs(), device)
        )
    return model


def _weight_names(model: nn.Module) -> list[str]:
    return [f"{n}.weight" for n in {**prunable_layers(model), **embedding_layers(model)}]


def _weight_count(model: nn.Module) -> int:
    layers = {**prunable_layers(model), **embedding_layers(model)}
    return sum(m.weight.numel() for m in layers.values())


def _packed_size(model: nn.Module, config: Config, masks: dict[str, torch.Tensor],
                 budget_bytes: int | None = None,
                 quant_plan: dict[str, QuantConfig] | None = None) -> int:
    """Packed bytes of the weights as they would be without fine-tuning (the cheap check).

    Packing never stores a tensor in more bytes than its dense form (plus a small
    header), so when the dense state already fits `budget_bytes` that bound is
    returned without packing (a large model need not be packed twice)."""
    dense = dense_bound(model.state_dict())
    if budget_bytes is not None and dense <= budget_bytes:
        return dense
    probe = copy.deepcopy(model)
    quantized = quantize_weights(probe, config.quant, quant_plan)
    sparse = {f"{n}.weight" for n in masks}
    return len(pack_state(probe.state_dict(), quantized, sparse))


def evaluate(
    workload: Workload,
    config: Config,
    *,
    budget_mb: float,
    device: torch.device | str = "cpu",
    seed: int = 0,
    accuracy_guard: float | None = None,
    reporter: Reporter | None = None,
    serve_overhead_ms: float = 0.0,
    is_baseline: bool = False,
) -> Evaluation:
    """Compress, fine-tune, pack, measure and serve one config.

    `serve_overhead_ms` is the real server's per-request overhead, added to every replayed
    request. The replay times the uncompressed base model on the same batches,
    interleaved with the trial's, so `speedup` compares like with like; `is_baseline`
    (the config is the uncompressed model itself) skips that second timing, and its
    `speedup` is 1 by definition rather than the ratio of two noisy timings of one model.

    `accuracy_guard` is the study's largest allowed accuracy drop, if it has one: a trial
    whose recovery cannot reach it (or, per the reporter, cannot leave the study's front
    dominated) raises `EarlyStopped` after a group of fine-tune steps (`early_stop.py`).
    Raises `EvaluationError` for a failed evaluation (NaN accuracy, diverged training).
    """
    reporter = reporter or Reporter()
    device = torch.device(device)
    t_start = time.perf_counter()
    torch.manual_seed(seed)
    base_acc = base_accuracy(workload, accuracy_guard)
    budget_bytes = int(round(budget_mb * 1e6))
    base_count = _prunable_count(workload.model)

    reporter.stage("prune")
    model = build_structure(workload, config, device)
    prune_plan, quant_plan = layer_plans(workload, model, config)
    masks = masks_for(model, config.prune, prune_plan)
    apply_masks(model, masks)
    # Pruned weights only: removed channels and masked weights. A weight that quantization
    # rounds to zero was not pruned, so a `prune.method=none` trial has sparsity 0.
    pruned = (base_count - _prunable_count(model)
              + sum(int(m.numel() - m.count_nonzero()) for m in masks.values()))

    # Cheap check first: weights that cannot fit the budget are not worth training.
    est = _packed_size(model, config, masks, budget_bytes, quant_plan)
    rejected = est > budget_bytes
    if rejected:
        reporter.attr("rejected", f"packed weights {est / 1e6:.3f} MB exceed the budget")

    if not rejected:
        reporter.stage("finetune")

        # Quantization-aware: the fine-tune sees the weights it will be served with.
        trains = planned_steps(workload, config.train) > 0
        objs = reporter.front_objectives() or ()
        front = trains and bool(objs) and set(objs) <= set(KNOWN_BEFORE_RECOVERY)
        watch = RecoveryWatch(
            workload, model, base_acc, accuracy_guard,
            dominated=reporter.dominated if front else None,
            # Packed before training: the formats' bytes depend on shapes and masks only.
            size_mb=(_packed_size(model, config, masks, None, quant_plan) / 1e6
                     if front and "size_mb" in objs else None))
        fq_layers = (attach_fake_quant(model, config.quant, masks, quant_plan)
                     if trains else [])
        try:
            finetune(model, workload, config.train, masks, device,
                     watch if accuracy_guard is not None or front else None)
        finally:
            detach_fake_quant(fq_layers)
            apply_masks(model, masks)

    reporter.stage("quantize")
    quantized = quantize_weights(model, config.quant, quant_plan)
    artifact = pack_state(model.state_dict(), quantized, {f"{n}.weight" for n in masks})
    eff_bits = effective_bits(artifact, _weight_names(model), _weight_count(workload.model))
    act_bytes = activation_bytes_per_sample(model, workload.example_inputs(), device)
    model = apply_runtime(model, config.quant, device, quant_plan, quantized)

    reporter.stage("measure")
    # A workload's `measure` hook sees the config (e.g. a causal LM's `quant.kv_bits`).
    # The baseline is the base model itself: its quality was measured by `base_accuracy`.
    base_measured = workload._cache.get("base_measured")
    if is_baseline and base_measured is not None and config.quant.kv_bits == 16:
        measured = {k: v for k, v in base_measured.items() if not k.startswith("heldout_")}
    else:
        measured = dict(workload.measure(model, config)) if workload.measure else {}
    acc = float(measured.pop("accuracy") if measured else
                base_acc if is_baseline else workload.evaluate(model))
    if not math.isfinite(acc):
        raise EvaluationError(f"accuracy is {acc}")

    reporter.stage("serve")
    served = workload.serve and workload.serve(  # a workload's own replay (causal LMs)
        model, config, budget_bytes=budget_bytes, weight_bytes=len(artifact), device=device,
        seed=seed)  # re-splits a sampled split that does not fit, as `replay` below
    served = served or replay(
        model,
        workload,
        config.serve,
        budget_bytes=budget_bytes,
        weight_bytes=len(artifact),
        device=device,
        seed=seed,
        act_bytes=act_bytes,
        serve_overhead_ms=serve_overhead_ms,
        baseline=None if is_baseline else _baseline_model(workload, device),
        resplit=True,
    )
    split = _served_split(served, config, reporter, rejected)
    metrics = {
        "accuracy": acc,
        "accuracy_drop": base_acc - acc,
        **{k: v for k, v in served.metrics.items()},
        **measured,
        "size_mb": len(artifact) / 1e6,
        "sparsity": pruned / base_count,
        "effective_bits": eff_bits,
        "rejected_early": float(rejected),
    }
    if is_baseline and "model_latency_ms" in metrics:
        metrics["baseline_model_latency_ms"] = metrics["model_latency_ms"]
        metrics["speedup"] = 1.0
    metrics["eval_seconds"] = time.perf_counter() - t_start
    samples = served.samples() if hasattr(served, "samples") else None
    return Evaluation(metrics, artifact, served.feasible_margin_mb, samples, split)


def _served_split(served: Any, config: Config, reporter: Reporter, rejected: bool
                  ) -> dict[str, Any] | None:
    """The split a replay re-split the trial to (as stored on the trial), or None; when no
    split fits, the reason goes to the reporter (unless the weights alone were rejected)."""
    split, need = getattr(served, "serve_split", None), getattr(served, "split_need", None)
    if split is None:
        if need is not None and need.overage_bytes > 0 and not rejected:
            reporter.attr("rejected", no_split_reason(need))
        return None
    return {"cache_ratio": split[0], "memory_ratio": split[1],
            "sampled": {"cache_ratio": config.serve.cache_ratio,
                        "memory_ratio": config.serve.memory_ratio}}
