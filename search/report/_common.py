"""What every part of the report shares: trial selection, names, directions, losses."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

Trials = Sequence[FrozenTrial]

# Metrics shown in the Pareto table besides the objectives, when the trials have them.
TABLE_METRICS = ("accuracy_drop", "throughput_rps", "memory_mb", "cache_hit_rate", "sparsity")
# Importances are computed on at most this many complete trials (the latest ones).
MAX_IMPORTANCE_TRIALS = 1000
HV_MARGIN = 0.1  # the reference point lies this fraction of the range beyond the worst value

_GREY = "#c8c8c8"


def _trials(study: optuna.Study, trials: Trials | None) -> Trials:
    return study.get_trials(deepcopy=False) if trials is None else trials


def _names(study: optuna.Study) -> list[str]:
    return list(study.metric_names or [f"objective{i}" for i in range(len(study.directions))])


def _dirs(study: optuna.Study) -> list[str]:
    return ["maximize" if d == StudyDirection.MAXIMIZE else "minimize"
            for d in study.directions]


def _complete(trials: Trials, n_obj: int) -> list[FrozenTrial]:
    return [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None
            and len(t.values) == n_obj and all(math.isfinite(v) for v in t.values)]


def _losses(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Objective values as losses (every objective minimised)."""
    signs = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    return values * signs
