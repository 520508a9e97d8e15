"""The public plugin API: everything csearch needs to judge one model."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["Workload"]


@dataclass
class Workload:
    """A trained fp32 model and the means to judge it.

    `evaluate(model) -> float` is accuracy on held-out data, higher is better; it may be
    called on any device, so it should move its inputs to the model's device.
    `request_inputs` are distinct requests for the serve replay: a tensor `[N, ...]` or a
    list combined with `collate`. Without `train_batches` the `train.*` parameters are
    inactive. `distill_loss` replaces the logit KD term of recovery training for models
    whose outputs are not logits (e.g. sentence embeddings).
    """

    name: str
    model: nn.Module
    evaluate: Callable[[nn.Module], float]
    request_inputs: torch.Tensor | Sequence[Any]
    train_batches: Callable[[], Iterable[tuple[Any, Any]]] | None = None
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None
    collate: Callable[[list[Any]], Any] | None = None
    memory_budget_mb: float | None = None
    # Serve replay settings (optional): Zipf skew of repeats, trace length, clients.
    zipf_skew: float = 1.1
    n_requests: int = 2000
    concurrency: int = 64
    # The user's own state to keep alive with the workload (datasets, tokenizers).
    extras: dict[str, Any] = field(default_factory=dict)
    # Optional distillation term `(student_out, teacher_out, temperature) -> loss` used by
    # recovery training when `train.kd_alpha > 0`. Default: Hinton's KD on logits (softmax
    # KL at `kd_temperature`), right for classifiers; embedding models supply their own.
    distill_loss: Callable[[Any, Any, float], torch.Tensor] | None = None
    # Optional layer groups for per-group parameters (`quant.bits[qkv]`): group name ->
    # fnmatch patterns over module names; a layer joins the first group that matches.
    # Default: one group per module type (linear, conv, embedding).
    groups: dict[str, list[str]] | None = None
    # Optional ranges this model needs for parameters a space declares, as the space
    # format's parameter tables: `{"train.lr": {"low": 1e-5, "high": 1e-4, "log": True}}`.
    # A pretrained model fine-tunes at rates that would barely move one trained from
    # scratch, so the built-in spaces take the workload's word for them (a space file of the
    # user's own keeps the ranges it sets).
    param_ranges: dict[str, dict[str, Any]] | None = None
    # Optional values for parameters a space leaves out, instead of the config defaults
    # (`{"serve.cache_ratio": 0.3}`): a causal LM served with no KV cache cannot run, so
    # `compression` or `training`, which declare no serving knobs, need its split.
    param_defaults: dict[str, Any] | None = None
    # Optional trial hooks for models whose quality or serving depends on the trial's
    # config beyond its weights (causal LMs: `quant.kv_bits`, a KV-cache serve replay).
    # `measure(model, config) -> {"accuracy": ..., other metrics}` replaces `evaluate` for
    # the trial's measurement; `serve(model, config, *, budget_bytes, weight_bytes,
    # device, seed)` replaces the response-cache replay and returns an object with
    # `metrics` (at least those of `serve.replay`) and `feasible_margin_mb`.
    measure: Callable[[nn.Module, Any], dict[str, float]] | None = None
    serve: Callable[..., Any] | None = None
    # csearch's own per-process state for this workload (base accuracy, request hashes,
    # teacher outputs): computed once, never part of the workload's identity.
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def batch(self, items: list[Any]) -> Any:
        """Combine request inputs into one model input."""
        if self.collate is not None:
            return self.collate(items)
        return torch.stack(items)

    def request(self, index: int) -> Any:
        return self.request_inputs[index]

    @property
    def n_distinct_requests(self) -> int:
        return len(self.request_inputs)

    def example_inputs(self) -> Any:
        return self.batch([self.request(0)])
