"""Trial evaluation: workloads, prune, quantize, fine-tune, pack, serve and measure.

Imports no click and never touches `optuna.Trial`: `search` drives it through `evaluate`
and a small `Reporter`.
"""

from .errors import EarlyStopped, EvaluationError, WorkloadError
from .pack import pack_state, unpack_state
from .pipeline import METRICS, Evaluation, Reporter, base_accuracy, build_structure, evaluate
from .workload import Workload
from .workloads import BUILTIN_WORKLOADS, list_workloads, load_workload, resolve_factory

__all__ = [
    "EarlyStopped",
    "EvaluationError",
    "WorkloadError",
    "pack_state",
    "unpack_state",
    "METRICS",
    "Evaluation",
    "Reporter",
    "base_accuracy",
    "build_structure",
    "evaluate",
    "Workload",
    "BUILTIN_WORKLOADS",
    "list_workloads",
    "load_workload",
    "resolve_factory",
]
