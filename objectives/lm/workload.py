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
from .model import decoder_forward, full_attention, lm_head, lm_logits, lm_shape
from .replay import GenerationResult, GenerationSettings, generation_replay

__all__ = [
    "HELDOUT_SUBSET",
    "HeldoutSubset",
    "LMData",
    "is_lm_workload",
    "lm_distill_loss",
    "lm_loss",
    "make_lm_workload",
    "next_token_metrics",
    "subset_size",
    "unigram_metrics",
    "window_metrics",
]

# The `Workload.extras` key of a workload whose quality is measured on a subset of
# held-out windows sized at the study's start (`HeldoutSubset`); `pipeline.base_accuracy`
# settles it.
HELDOUT_SUBSET = "heldout_subset"


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
def window_metrics(model: nn.Module, windows: torch.Tensor, kv_bits: int | None,
                   batch: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Per window of `windows`: correct top-1 next-token predictions and summed NLL."""
    model.eval()
    device = _device(model)
    correct, nll = [], []
    for x in windows.split(batch):
        x = x.to(device)
        logits = lm_logits(model, _final_hidden(model, x, kv_bits)).float()
        c, ll = _window_scores(logits, x[:, 1:].reshape(-1), x.shape[0], x.shape[1] - 1)
        correct.append(c)
        nll.append(ll)
    return torch.cat(correct), torch.cat(nll)


def _final_hidden(model: nn.Module, x: torch.Tensor, kv_bits: int | None) -> torch.Tensor:
    """The decoder's final hidden states predicting each next token of windows `x` (all
    positions but the last, window after window)."""
    b, n = x.shape[0], x.shape[1] - 1
    positions = torch.arange(n, device=x.device).repeat(b)
    return decoder_forward(model, x[:, :-1].reshape(-1), positions, full_attention(kv_bits),
                           batch=b)


def _window_scores(logits: torch.Tensor, target: torch.Tensor, b: int, n: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per window of `b` windows of `n` positions: correct top-1 predictions, summed NLL."""
    return ((logits.argmax(-1) == target).view(b, n).sum(1).cpu(),
            F.cross_entropy(logits, target, reduction="none").view(b, n).sum(1).cpu().double())


def _aggregate(correct: torch.Tensor, nll: torch.Tensor, per_window: int) -> dict[str, float]:
    count = per_window * len(correct)
    return {"accuracy": int(correct.sum()) / count,
            "perplexity": math.exp(float(nll.sum()) / count)}


def next_token_metrics(model: nn.Module, windows: torch.Tensor, kv_bits: int | None,
                       batch: int = 16) -> dict[str, float]:
    """Top-1 next-token accuracy and perplexity over every position of `windows`."""
    correct, nll = window_metrics(model, windows, kv_bits, batch)
    return _aggregate(correct, nll, windows.shape[1] - 1)


# The subset grows by this many windows, and is never smaller than MIN_WINDOWS: a
# standard error from fewer windows is itself too noisy to trust.
WINDOW_CHUNK, MIN_WINDOWS = 8, 16


def subset_size(accuracies: torch.Tensor | list[float], guard: float,
                chunk: int = WINDOW_CHUNK, minimum: int = MIN_WINDOWS) -> int | None:
    """The fewest windows (a multiple of `chunk`, at least `minimum`) whose per-window
    accuracies have a standard error of the mean below `guard / 2`; None if even all of
    them do not (then every window is used)."""
    acc = torch.as_tensor(accuracies, dtype=torch.float64)
    for n in range(max(minimum, chunk), len(acc) + 1, chunk):
        if float(acc[:n].std() / math.sqrt(n)) < guard / 2:
            return n
    return None


@dataclass
class HeldoutSubset:
    """How many held-out windows the workload's `evaluate` and `measure` use (None: all).
    Set once per process by `settle` (the study start, and each worker, reach the same
    size: it is a deterministic function of the fp32 model, the data and the guard)."""

    windows: torch.Tensor
    n: int | None = None
    _hidden: list[torch.Tensor] | None = None  # the fp32 model's, for the current subset
    _base_correct: torch.Tensor | None = None  # the fp32 model's per-window correct counts

    def current(self) -> torch.Tensor:
        return self.windows if self.n is None else self.windows[:self.n]

    @staticmethod
    def head_name(model: nn.Module) -> str | None:
        """The qualified name of `model`'s output head (the layer `lm_logits` applies)."""
        head = lm_head(model)
        return next((n for n, m in model.named_modules() if m is head), None)

    def _hidden_states(self, base: nn.Module) -> list[torch.Tensor]:
        """The fp32 decoder's final hidden states of the current subset, one tensor per
        chunk of `WINDOW_CHUNK` windows, computed once."""
        windows = self.current()
        if self._hidden is None or len(self._hidden) != math.ceil(len(windows) / WINDOW_CHUNK):
            self._hidden = []
            for x in windows.split(WINDOW_CHUNK):
                self._hidden.append(_final_hidden(base.eval(), x.to(_device(base)), 16))
        return self._hidden

    def _head_chunk(self, base: nn.Module, model: nn.Module, i: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-window correct counts and NLL of chunk `i` through `model`'s head only."""
        x = self.current().split(WINDOW_CHUNK)[i]
        hidden = self._hidden_states(base)[i]
        device = _device(model)
        logits = lm_logits(model, hidden.to(device)).float()
        b, n = x.shape[0], x.shape[1] - 1
        return _window_scores(logits, x[:, 1:].reshape(-1).to(device), b, n)

    @torch.inference_mode()
    def head_metrics(self, base: nn.Module, model: nn.Module) -> dict[str, float]:
        """Metrics of `model`, which differs from the fp32 `base` only in its output head:
        the decoder's final hidden states are the fp32 ones, computed once and reused
        (a sensitivity probe of the head costs one matmul per window, not a forward)."""
        parts = [self._head_chunk(base, model, i)
                 for i in range(len(self._hidden_states(base)))]
        return _aggregate(torch.cat([c for c, _ in parts]), torch.cat([n for _, n in parts]),
                          self.current().shape[1] - 1)

    @torch.inference_mode()
    def probe_drop(self, base: nn.Module, model: nn.Module, guard: float,
                   head_only: bool = False) -> dict[str, float]:
        """Accuracy drop of `model` against the fp32 `base`, paired window by window with
        the fp32 model's per-window results (kept from `settle`, not recomputed), over
        chunks of the subset until the standard error of the per-window drop is below
        `guard / 2` (at least one chunk). A probe changes few predictions, so the paired
        drop is far less noisy than either accuracy and a chunk or two usually decide.
        `head_only`: `model` differs from `base` only in its output head
        (`head_metrics`). Returns the drop and the windows it used."""
        windows = self.current()
        per_window = windows.shape[1] - 1
        if self._base_correct is None or len(self._base_correct) < len(windows):
            self._base_correct = window_metrics(base, windows, 16)[0]
        diffs = torch.zeros(0, dtype=torch.float64)
        for i, x in enumerate(windows.split(WINDOW_CHUNK)):
            correct = (self._head_chunk(base, model, i)[0] if head_only
                       else window_metrics(model, x, 16)[0])
            start = i * WINDOW_CHUNK
            base_c = self._base_correct[start:start + len(x)]
            diffs = torch.cat([diffs, (base_c - correct).double() / per_window])
            if len(diffs) > 1 and float(diffs.std()) / math.sqrt(len(diffs)) < guard / 2:
                break
        return {"drop": float(diffs.mean()), "windows": float(len(diffs))}

    def settle(self, model: nn.Module, guard: float) -> dict[str, float]:
        """Evaluate the fp32 `model` chunk by chunk until the subset's standard error is
        below `guard / 2` (`subset_size`); fix the subset; return its metrics, with the
        window counts (`heldout_windows`, `heldout_total`)."""
        correct, nll = torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.float64)
        per_window = self.windows.shape[1] - 1
        n = None
        for start in range(0, len(self.windows), WINDOW_CHUNK):
            c, ll = window_metrics(model, self.windows[start:start + WINDOW_CHUNK], 16)
            correct, nll = torch.cat([correct, c]), torch.cat([nll, ll])
            n = subset_size(correct.double() / per_window, guard)
            if n is not None:
                break
        self.n = n
        k = len(self.windows) if n is None else n
        self._base_correct = correct[:k]
        return {**_aggregate(correct[:k], nll[:k], per_window),
                "heldout_windows": float(k), "heldout_total": float(len(self.windows))}


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

    heldout = HeldoutSubset(data.heldout)

    def measure(m: nn.Module, config: Config) -> dict[str, float]:
        return next_token_metrics(m, heldout.current(), config.quant.kv_bits)

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
    extras[HELDOUT_SUBSET] = heldout
    return Workload(
        name=name,
        model=model,
        evaluate=lambda m: next_token_metrics(m, heldout.current(), 16)["accuracy"],
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
