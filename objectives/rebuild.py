"""Rebuilding a trial's served model from its packed state, for export and serving."""

from __future__ import annotations

import torch
from torch import nn

from spaces import Config

from .groups import layer_plans
from .pack import shared_tensors
from .pipeline import build_structure
from .quantize import QuantizedWeight, apply_runtime
from .workload import Workload

__all__ = ["rebuild"]


def rebuild(workload: Workload, config: Config, state: dict[str, torch.Tensor],
            device: torch.device,
            quantized: dict[str, QuantizedWeight] | None = None) -> nn.Module:
    """The model a trial served: the config's structure, `state` (an unpacked artifact)
    loaded into it, and the config's runtime quantization applied, in eval mode; the
    weight-only kernels are built from `quantized` (`pack.unpack_quantized`)."""
    model = build_structure(workload, config, device)
    for name, of in shared_tensors(model.state_dict()).items():
        if name in state and of in state and not torch.equal(state[name], state[of]):
            _untie(model, name)  # an artifact from before tied layers stayed tied
    model.load_state_dict({k: v.to(device) for k, v in state.items()})
    model.eval()
    _, quant_plan = layer_plans(workload, model, config)
    return apply_runtime(model, config.quant, device, quant_plan, quantized)


def _untie(model: nn.Module, name: str) -> None:
    """Give parameter `name` a tensor of its own, so loading it leaves the one it shared
    (the embedding of a tied output layer) as it was stored."""
    path, _, attr = name.rpartition(".")
    module = model.get_submodule(path)
    setattr(module, attr, nn.Parameter(getattr(module, attr).detach().clone()))
