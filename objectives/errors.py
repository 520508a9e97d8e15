"""Errors raised while building workloads or evaluating trials."""

from __future__ import annotations

from spaces import CsearchError

__all__ = ["WorkloadError", "QuantizationError", "EarlyStopped", "EvaluationError"]


class WorkloadError(CsearchError):
    """A workload reference cannot be resolved or built (a user error)."""


class QuantizationError(CsearchError):
    """A quantization setting no kernel can run (e.g. an int4 group size it lacks)."""


class EvaluationError(Exception):
    """A trial's evaluation failed (NaN, OOM, user code); the trial is stored as FAIL."""


class EarlyStopped(Exception):
    """A trial cannot recover the accuracy guard; it is stored as PRUNED with `reason`.
    `info`: where recovery stopped and what that saved (`early_stop.RecoveryWatch`)."""

    def __init__(self, reason: str, metrics: dict[str, float] | None = None,
                 info: dict[str, object] | None = None):
        super().__init__(reason)
        self.reason = reason
        self.metrics = metrics or {}
        self.info = info or {}
