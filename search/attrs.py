"""Every attribute csearch stores on a trial or a study, named once, and the one writer of
a trial's results (used by the runner and by the spool that writes results back later).

optuna-dashboard, `csearch trials` and exported `csearch.json` files read these names,
so they are part of the stored format: renaming one breaks existing studies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

from ._optuna import note_attrs, trial_id_of
from .storage import set_trial_attrs

__all__ = [
    "ARTIFACT_ID", "BASELINE", "CONSTRAINT_PREFIX", "DEVICE", "EARLY_STOP", "EVAL_SEED",
    "ENVIRONMENT", "START_SECONDS",
    "FAIL_REASON", "GPU", "INTERRUPTED", "LEGACY_CONSTRAINTS", "METRICS", "PARTIAL_METRICS",
    "PRUNED_REASON", "QUEUED", "RECOVERED_FROM", "REJECTED", "REPLAY_SAMPLES", "RETRY_OF",
    "SEEDED", "SENSITIVITY", "SERVED", "SERVE_SPLIT", "SPEC", "WORKER", "TrialResult",
    "store_results",
]

# --- trial user attrs --------------------------------------------------------------------
METRICS = "metrics"  # every measured metric, objective or not
WORKER = "worker"  # host:pid of the process that evaluated the trial
DEVICE = "device"  # the torch device the trial was evaluated on (cpu, cuda, cuda:1)
GPU = "gpu"  # the GPU csearch placed the trial's worker on (its CUDA_VISIBLE_DEVICES)
EVAL_SEED = "eval_seed"  # the evaluation's seed, so export rebuilds the same artifact
ARTIFACT_ID = "artifact_id"  # the packed model in the study's artifact store
FAIL_REASON = "fail_reason"  # why a FAIL trial failed
INTERRUPTED = "interrupted"  # True: failed by a signal, not by its config
PRUNED_REASON = "pruned_reason"  # why csearch stopped a hopeless trial
PARTIAL_METRICS = "partial_metrics"  # what a pruned trial measured before it stopped
# csearch's early stop of recovery: {"rule": "guard"|"dominated", "step", "steps",
# "seconds_spent", "seconds_saved"} (objectives/early_stop.py)
EARLY_STOP = "early_stop"
REJECTED = "rejected"  # the evaluation's cheap pre-check said no (objectives' reporter)
RECOVERED_FROM = "recovered_from"  # a spooled result re-added as a new trial: the old number
RETRY_OF = "retry_of"  # re-queued after a signal failed it: the failed trial's number
SEEDED = "seeded"  # enqueued by csearch (True, or the seeding's name); also a study attr
# Study attr: the trials csearch queues itself ([{"params", "user_attrs"}]), each enqueued
# only just before it runs; trial attr: the trial's index in that list.
QUEUED = "queued"
SERVED = "served"  # `csearch loadtest --trial`: the real server's measurements
# The serve split the trial was measured with when its sampled one broke the budget and
# this one fits: {"cache_ratio", "memory_ratio", "sampled": {...}}; export, deploy and
# serve use it (also a key of the study's BASELINE when the baseline was re-split).
SERVE_SPLIT = "serve_split"
# A generation replay's tokens for its first distinct prompts: [{"prompt": i, "tokens": [...]}]
REPLAY_SAMPLES = "replay_samples"

# --- trial system attrs ------------------------------------------------------------------
# Where Optuna 5's `Trial.set_constraint(name, v)` keeps v: "constraints:NAME".
CONSTRAINT_PREFIX = "constraints:"
# optuna-dashboard 0.21 reads feasibility only from this list-valued system attr.
LEGACY_CONSTRAINTS = "constraints"

# --- study user attrs --------------------------------------------------------------------
SPEC = "spec"  # the StudySpec: workers need nothing else
BASELINE = "baseline"  # the uncompressed model's metrics
ENVIRONMENT = "environment"  # device, versions, threads
SENSITIVITY = "sensitivity"  # the per-layer-group sensitivity pass
# Seconds of each study-start stage: {"load", "baseline", "sensitivity"}, and the held-out
# windows the start evaluated ({"heldout_windows", "heldout_total"}) where it chose a subset
START_SECONDS = "start_seconds"


def _constraint_value(name: str, value: object) -> float:
    """The checks of `Trial.set_constraint`: a float, never NaN."""
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TypeError(f"constraint {name!r} is a {type(value).__name__}, not a float") from None
    if math.isnan(out):
        raise ValueError(f"Attempted to set a constraint for {name!r}, but NaN is not allowed.")
    return out


@dataclass(frozen=True)
class TrialResult:
    """What an evaluated trial stores besides its values: metrics, constraints, artifact."""

    values: list[float]
    metrics: dict[str, float]
    constraints: dict[str, float]  # name -> value, <= 0 is feasible
    artifact_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # more user attrs (RECOVERED_FROM)

    def user_attrs(self) -> dict[str, Any]:
        user: dict[str, Any] = {METRICS: self.metrics, **self.extra}
        if self.artifact_id is not None:
            user[ARTIFACT_ID] = self.artifact_id
        return user

    def system_attrs(self) -> dict[str, Any]:
        """What `trial.set_constraint` stores (with its checks), plus the list
        optuna-dashboard reads."""
        system: dict[str, Any] = {f"{CONSTRAINT_PREFIX}{k}": _constraint_value(k, v)
                                  for k, v in self.constraints.items()}
        system[LEGACY_CONSTRAINTS] = list(self.constraints.values())
        return system

    def to_record(self) -> dict[str, Any]:
        return {"values": self.values, "user_attrs": self.user_attrs(),
                "constraints": self.constraints,
                "legacy_constraints": list(self.constraints.values())}

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> TrialResult:
        user = dict(rec["user_attrs"])
        metrics = user.pop(METRICS, {})
        artifact_id = user.pop(ARTIFACT_ID, None)
        return cls(list(rec["values"]), metrics, dict(rec["constraints"]), artifact_id, user)


def store_results(storage: BaseStorage, trial: optuna.Trial | FrozenTrial,
                  result: TrialResult) -> None:
    """Store a trial's results in one write (one commit on csearch's RDB storages), and
    keep a live trial's `user_attrs` in step. The metrics are stored even when a
    constraint value is invalid; that error is raised after."""
    user = result.user_attrs()
    try:
        system = result.system_attrs()
    except (TypeError, ValueError):
        set_trial_attrs(storage, trial_id_of(trial), user, {})
        note_attrs(trial, user, {})
        raise
    set_trial_attrs(storage, trial_id_of(trial), user, system)
    note_attrs(trial, user, system)
