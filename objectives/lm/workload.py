"""A `Workload` for a causal LM: next-token accuracy and perplexity on held-out windows
(through the trial's KV-cache format), LM loss with logit distillation for recovery
training, and the generation replay as its serve stage (the `measure` and `serve` hooks
of the plugin API)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from spaces import Config

from ..serve import zipf_trace
from ..workload import Workload
from .model import decoder_forward, full_attention, lm_logits, lm_shape
from .replay import GenerationResult, GenerationSettings, generation_replay

__all__ = [
    "LMData",
    "is_lm_workload",
    "lm_distill_loss",
    "lm_loss",
    "make_lm_workload",
    "next_token_metrics",
    "unigram_metrics",
]


@dataclass(frozen=True)
class LMData:
    """Token ids: `train` windows `[N, T+1]` for recovery training, `heldout` windows
    `[M, T+1]` for evaluation, serve-replay `prompts`, and training-token counts
    (`unigram`) for the baseline."""

    train: torch.Tensor
    heldout: torch.Tensor
    prompts: list[list[int]]
    unigram: torch.Tensor | None = None


def is_lm_workload(workload: Workload) -> bool:
    """Built by `make_lm_workload`: served by generation over a KV cache, so
    `quant.kv_bits` and the LM metrics (`ttft_ms`, ...) mean something for it."""
    return isinstance(workload.extras.get("lm_data"), LMData)


def _device(model: nn.Module) -> torch.device:
    return next(iter(model.state_dict().values())).device


@torch.inference_mode()
def next_token_metrics(model: nn.Module, windows: torch.Tensor, kv_bits: int | None,
                       batch: int = 16) -> dict[str, float]:
    """Top-1 next-token accuracy and perplexity over every position of `windows`."""
    model.eval()
    device = _device(model)
    correct, nll, count = 0, 0.0, 0
    for x in windows.split(batch):
        x = x.to(device)
        b, n = x.shape[0], x.shape[1] - 1
        inputs = x[:, :-1].reshape(-1)
        positions = torch.arange(n, device=device).repeat(b)
        hidden = decoder_forward(model, inputs, positions, full_attention(kv_bits), batch=b)
        logits = lm_logits(model, hidden).float()
        target = x[:, 1:].reshape(-1)
        correct += int((logits.argmax(-1) == target).sum())
        nll += float(F.cross_entropy(logits, target, reduction="sum"))
        count += target.numel()
    return {"accuracy": correct / count, "perplexity": math.exp(nll / count)}


def unigram_metrics(counts: torch.Tensor, windows: torch.Tensor) -> dict[str, float]:
    """The same metrics for the unigram model of the training tokens (add-one smoothed)."""
    p = (counts.double() + 1) / (counts.sum() + len(counts))
    target = windows[:, 1:].reshape(-1)
    return {"accuracy": float((target == int(p.argmax())).double().mean()),
            "perplexity": math.exp(float(-p.log()[target].mean()))}


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, -2), targets.flatten())


def lm_distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float
                    ) -> torch.Tensor:
    """Hinton's KD per token position (mean over positions), scaled by T^2."""
    t = temperature
    return F.kl_div(F.log_softmax(student.flatten(0, -2) / t, -1),
                    F.softmax(teacher.flatten(0, -2) / t, -1), reduction="batchmean") * t * t


def make_lm_workload(name: str, model: nn.Module, data: LMData, *, batch_size: int = 16,
                     memory_budget_mb: float | None = None,
                     settings: GenerationSettings | None = None,
                     zipf_skew: float = 1.1, extras: dict[str, Any] | None = None
                     ) -> Workload:
    settings = settings or GenerationSettings()
    lm_shape(model)  # fail now, not in a trial, if the model is not Llama-like
    batches = [(x[:, :-1].contiguous(), x[:, 1:].contiguous())
               for x in data.train.split(batch_size)]

    def train_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [batches[i] for i in torch.randperm(len(batches)).tolist()]

    def measure(m: nn.Module, config: Config) -> dict[str, float]:
        return next_token_metrics(m, data.heldout, config.quant.kv_bits)

    def serve(m: nn.Module, config: Config, *, budget_bytes: int, weight_bytes: int,
              device: torch.device, seed: int = 0, resplit: bool = True) -> GenerationResult:
        # A trial is served with a split that fits when one does (`objectives.split`).
        trace = zipf_trace(len(data.prompts), settings.n_requests, zipf_skew, seed)
        return generation_replay(m, data.prompts, trace, config.serve,
                                 kv_bits=config.quant.kv_bits, budget_bytes=budget_bytes,
                                 weight_bytes=weight_bytes, device=device, settings=settings,
                                 resplit=resplit)

    extras = dict(extras or {})
    extras["lm_data"] = data
    extras["generation"] = settings  # what a server of this workload generates per request
    return Workload(
        name=name,
        model=model,
        evaluate=lambda m: next_token_metrics(m, data.heldout, 16)["accuracy"],
        request_inputs=[torch.tensor(p) for p in data.prompts],
        train_batches=train_batches,
        loss_fn=lm_loss,
        distill_loss=lm_distill_loss,
        memory_budget_mb=memory_budget_mb,
        zipf_skew=zipf_skew,
        n_requests=settings.n_requests,
        concurrency=settings.concurrency,
        extras=extras,
        groups={"embeddings": ["*embed_tokens"], "attn": ["*self_attn.*"],
                "mlp": ["*mlp.*"], "lm_head": ["*lm_head"]},
        measure=measure,
        serve=serve,
        # A space without serving knobs still serves with a KV cache and a workspace.
        param_defaults={"serve.cache_ratio": 0.3, "serve.memory_ratio": 0.15},
    )
