"""Trial evaluation: workloads, prune, quantize, fine-tune, pack, serve and measure.

Imports no click and never touches `optuna.Trial`: `search` drives it through `evaluate`
and a small `Reporter`. Names load lazily, so reading the metric names costs no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EarlyStopped": ".errors",
    "EvaluationError": ".errors",
    "WorkloadError": ".errors",
    "QuantizationError": ".errors",
    "METRICS": ".metrics",
    "cache_dir": ".workloads._cache",
    "pack_state": ".pack",
    "unpack_state": ".pack",
    "unpack_quantized": ".pack",
    "PROGRESS_LOGGER": ".progress",
    "report_stage": ".progress",
    "Evaluation": ".pipeline",
    "Reporter": ".pipeline",
    "base_accuracy": ".pipeline",
    "build_structure": ".pipeline",
    "evaluate": ".pipeline",
    "rebuild": ".rebuild",
    "SplitNeed": ".split",
    "fitting_split": ".split",
    "Workload": ".workload",
    "BUILTIN_WORKLOADS": ".workloads",
    "list_workloads": ".workloads",
    "load_workload": ".workloads",
    "resolve_factory": ".workloads",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'objectives' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
