"""Objectives (`accuracy:max`) and constraints (`accuracy_drop<=0.01`) over named metrics."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from objectives.metrics import EXTRA_METRICS, LM_METRICS, METRICS

from .errors import UsageError

__all__ = ["Objective", "Constraint", "parse_objective", "parse_constraint", "KNOWN_METRICS"]

# Every metric a study may optimise or constrain: the contract plus diagnostics.
KNOWN_METRICS = METRICS + EXTRA_METRICS + LM_METRICS
_DIRECTIONS = {"max": "maximize", "maximize": "maximize", "min": "minimize", "minimize": "minimize"}


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str  # "maximize" | "minimize"

    def __str__(self) -> str:
        return f"{self.metric}:{'max' if self.direction == 'maximize' else 'min'}"


@dataclass(frozen=True)
class Constraint:
    metric: str
    op: str  # "<=" | ">="
    bound: float

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.bound:g}"

    def value(self, metrics: dict[str, float]) -> float:
        """Optuna's convention: <= 0 is feasible."""
        v = metrics[self.metric]
        return v - self.bound if self.op == "<=" else self.bound - v


def _metric(name: str, what: str) -> str:
    if name not in KNOWN_METRICS:
        raise UsageError(
            f"unknown metric {name!r} in {what}; valid: {', '.join(KNOWN_METRICS)}"
        )
    return name


def parse_objective(text: str) -> Objective:
    name, sep, direction = text.strip().partition(":")
    if not sep:
        raise UsageError(f"objective {text!r} must look like METRIC:max or METRIC:min")
    if direction not in _DIRECTIONS:
        raise UsageError(
            f"unknown direction {direction!r} in objective {text!r}; valid: max, min"
        )
    return Objective(_metric(name.strip(), f"objective {text!r}"), _DIRECTIONS[direction])


_CONSTRAINT = re.compile(r"^\s*([a-z_0-9]+)\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*$")


def parse_constraint(text: str) -> Constraint:
    m = _CONSTRAINT.match(text)
    if not m:
        raise UsageError(
            f"bad constraint {text!r}; write METRIC<=NUMBER or METRIC>=NUMBER, "
            "e.g. accuracy_drop<=0.01"
        )
    name, op, raw = m.groups()
    try:
        bound = float(raw)
    except ValueError:
        raise UsageError(f"bad number {raw!r} in constraint {text!r}") from None
    if not math.isfinite(bound):
        raise UsageError(f"constraint {text!r} needs a finite bound")
    return Constraint(_metric(name, f"constraint {text!r}"), op[:1] + "=", bound)
