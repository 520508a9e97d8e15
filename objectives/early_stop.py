"""csearch's own early stop of recovery fine-tuning (Optuna's pruners do not do
multi-objective studies: `Trial.report` raises for them).

After each group of optimizer steps the model is evaluated (the workload's held-out
accuracy; for a language model the study's standard-error-sized subset of windows), and
the trial stops when recovery cannot reach what the study asks:
  * the guard: even an optimistic projection of the final accuracy breaks the study's
    accuracy-drop guard;
  * the front: with that optimistic accuracy, and the objectives known before recovery
    (size), a feasible trial of the current Pareto front is at least as good on every
    objective. The study's side of this (which trials form the front) is the reporter's.

The projection is optimistic on purpose (a wrong stop loses a trial, a late one only
time): with one evaluation it allows `hopeless_margin(guard)`; with two or more, twice
the latest per-step gain over the remaining steps (recovery curves flatten, so the
latest gain overestimates the next ones), plus one guard of evaluation noise.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from .errors import EarlyStopped
from .workload import Workload

__all__ = ["RecoveryWatch", "hopeless_margin", "optimistic_accuracy", "KNOWN_BEFORE_RECOVERY"]

# Metrics a trial knows before its recovery ends (accuracy as its optimistic projection).
KNOWN_BEFORE_RECOVERY = ("accuracy", "accuracy_drop", "size_mb")


def hopeless_margin(guard: float) -> float:
    """How much accuracy one evaluation's worth of evidence allows recovery to regain."""
    return max(10 * guard, guard + 0.2)


def optimistic_accuracy(history: list[tuple[int, float]], total: int, guard: float) -> float:
    """The best final accuracy recovery can plausibly reach from `history` [(step, acc)]."""
    step, acc = history[-1]
    if len(history) < 2:
        return acc + hopeless_margin(guard)
    s0, a0 = history[-2]
    gain = max(0.0, (acc - a0) / max(1, step - s0))
    return acc + 2 * gain * (total - step) + guard


@dataclass
class RecoveryWatch:
    """The `check(step, total)` callback `finetune` calls per group of steps.

    `dominated(known) -> reason | None` is the study's front check (the reporter's);
    `size_mb` is the trial's packed size where the front check needs it.
    """

    workload: Workload
    model: nn.Module
    base_accuracy: float
    guard: float | None
    dominated: Callable[[dict[str, float]], str | None] | None = None
    size_mb: float | None = None
    history: list[tuple[int, float]] = field(default_factory=list)
    t0: float = field(default_factory=time.perf_counter)

    def __call__(self, step: int, total: int) -> None:
        acc = float(self.workload.evaluate(self.model))
        self.history.append((step, acc))
        guard = self.guard if self.guard is not None else 0.01
        best = min(optimistic_accuracy(self.history, total, guard), 1.0)
        drop = self.base_accuracy - acc
        reason, rule = None, ""
        if self.guard is not None and self.base_accuracy - best > self.guard:
            rule = "guard"
            reason = (f"accuracy {acc:.4f} after {step}/{total} recovery steps is {drop:.4f} "
                      f"below the base model; at best {best:.4f} after all {total}, which "
                      f"breaks the guard {self.guard:g}")
        elif self.dominated is not None:
            known = {"accuracy": best, "accuracy_drop": self.base_accuracy - best}
            if self.size_mb is not None:
                known["size_mb"] = self.size_mb
            front = self.dominated(known)
            if front is not None:
                rule = "dominated"
                reason = (f"accuracy {acc:.4f} after {step}/{total} recovery steps (at best "
                          f"{best:.4f} after all {total}) is dominated by {front}")
        if reason is None:
            return
        spent = time.perf_counter() - self.t0
        raise EarlyStopped(reason, {"accuracy": acc, "accuracy_drop": drop}, info={
            "rule": rule, "step": step, "steps": total,
            # The recovery steps not taken, at the pace of those taken; the measurement
            # and replay a finished trial would also have paid are not counted.
            "seconds_saved": round(spent / step * (total - step), 3),
            "seconds_spent": round(spent, 3),
        })
