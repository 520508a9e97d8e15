"""Recovery fine-tuning with masks held, optionally distilling from the fp32 base model."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from spaces import TrainConfig

from .errors import EvaluationError
from .prune import apply_masks
from ._device import to_device
from .workload import Workload

__all__ = ["distillation_loss", "finetune"]


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """Hinton's KD: KL between softened distributions, scaled by T^2."""
    t = temperature
    return F.kl_div(
        F.log_softmax(student / t, dim=-1), F.softmax(teacher / t, dim=-1), reduction="batchmean"
    ) * (t * t)


def _teacher_outputs(workload: Workload, inputs: object, device: torch.device) -> torch.Tensor:
    """fp32 teacher outputs, computed once per process for each distinct batch object."""
    cache: dict[int, tuple[object, torch.Tensor]] = workload._cache.setdefault("teacher", {})
    hit = cache.get(id(inputs))
    if hit is not None and hit[0] is inputs:
        return hit[1].to(device)
    teacher = workload.model
    with torch.inference_mode():
        out = teacher(to_device(inputs, next(teacher.parameters()).device)).detach().cpu()
    cache[id(inputs)] = (inputs, out)
    return out.to(device)


def finetune(
    model: nn.Module,
    workload: Workload,
    cfg: TrainConfig,
    masks: Mapping[str, torch.Tensor],
    device: torch.device,
    after_epoch: Callable[[int], None] | None = None,
) -> None:
    """Train `model` in place for `cfg.epochs` epochs of `workload.train_batches()`.

    `after_epoch(epoch)` may raise `EarlyStopped` to abandon a hopeless trial.
    """
    if workload.train_batches is None or cfg.epochs <= 0:
        return
    loss_fn = workload.loss_fn or F.cross_entropy
    kd_fn = workload.distill_loss or distillation_loss
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    for epoch in range(cfg.epochs):
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
        model.eval()
        if after_epoch is not None:
            after_epoch(epoch)
