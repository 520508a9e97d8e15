"""Recovery fine-tuning with masks held, optionally distilling from the fp32 base model."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sized

import torch
import torch.nn.functional as F
from torch import nn

from spaces import TrainConfig

from .errors import EvaluationError
from .prune import apply_masks
from ._device import to_device
from .workload import Workload

__all__ = ["distillation_loss", "finetune", "planned_steps"]


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """Hinton's KD: KL between softened distributions, scaled by T^2."""
    t = temperature
    return F.kl_div(
        F.log_softmax(student / t, dim=-1), F.softmax(teacher / t, dim=-1), reduction="batchmean"
    ) * (t * t)


def _teacher_outputs(workload: Workload, inputs: object, device: torch.device) -> torch.Tensor:
    """fp32 teacher outputs, computed once per process for each distinct batch object
    (every trial of a worker distils from the same cached logits). Stored as fp16 when
    they fit its range: a large vocabulary's logits for every training window are
    gigabytes in fp32, and the softened targets do not need more than fp16 holds."""
    cache: dict[int, tuple[object, torch.Tensor]] = workload._cache.setdefault("teacher", {})
    hit = cache.get(id(inputs))
    if hit is None or hit[0] is not inputs:
        teacher = workload.model
        with torch.inference_mode():
            out = teacher(to_device(inputs, next(teacher.parameters()).device)).detach().cpu()
        if out.dtype == torch.float32 and bool(out.abs().max() < 6e4):
            out = out.half()
        cache[id(inputs)] = (inputs, out)
        hit = cache[id(inputs)]
    out = hit[1]
    return out.to(device).float() if out.dtype == torch.float16 else out.to(device)


def planned_steps(workload: Workload, cfg: TrainConfig) -> int:
    """Optimizer steps the recovery takes: `cfg.steps` when set, else `cfg.epochs` passes
    over the train batches (counted once when they are a sized collection; 0 without)."""
    if workload.train_batches is None:
        return 0
    if cfg.steps is not None:
        return max(0, cfg.steps)
    if cfg.epochs <= 0:
        return 0
    batches = workload.train_batches()
    return cfg.epochs * len(batches) if isinstance(batches, Sized) else cfg.epochs


def finetune(
    model: nn.Module,
    workload: Workload,
    cfg: TrainConfig,
    masks: Mapping[str, torch.Tensor],
    device: torch.device,
    check: Callable[[int, int], None] | None = None,
    checks: int = 3,
) -> int:
    """Train `model` in place: `cfg.steps` optimizer steps (cycling through
    `workload.train_batches()`, reshuffled per pass) when set, else `cfg.epochs` passes.
    Returns the steps taken.

    `check(step, total)` runs in eval mode after each group of steps, at most `checks`
    times and at most once per 4 steps (a check is an evaluation, which costs about what
    a step does), never after the last step (with epochs: after each epoch but the last);
    it may raise `EarlyStopped` to abandon a hopeless trial.
    """
    total = planned_steps(workload, cfg)
    if total <= 0 or workload.train_batches is None:
        return 0
    loss_fn = workload.loss_fn or F.cross_entropy
    kd_fn = workload.distill_loss or distillation_loss
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    by_steps = cfg.steps is not None
    every = math.ceil(total / (min(checks, total // 4) + 1)) if by_steps else 0
    step, epoch = 0, 0
    while step < total if by_steps else epoch < cfg.epochs:
        model.train()
        for inputs, targets in workload.train_batches():
            out = model(to_device(inputs, device))
            loss = loss_fn(out, to_device(targets, device))
            if cfg.kd_alpha > 0:
                teacher = _teacher_outputs(workload, inputs, device)
                kd = kd_fn(out, teacher, cfg.kd_temperature)
                loss = (1 - cfg.kd_alpha) * loss + cfg.kd_alpha * kd
            if not math.isfinite(float(loss.detach())):
                raise EvaluationError(
                    f"fine-tuning diverged (loss {float(loss.detach())}) at lr={cfg.lr:g}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            apply_masks(model, masks)
            step += 1
            if by_steps and step >= total:
                break
            if by_steps and check is not None and step % every == 0:
                model.eval()
                check(step, total)
                model.train()
        epoch += 1
        model.eval()
        if not by_steps and check is not None and epoch < cfg.epochs:
            check(step, total)
    model.eval()
    return step
