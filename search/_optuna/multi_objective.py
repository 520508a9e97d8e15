"""Optuna's multi-objective helpers, so csearch decides fronts and volumes as Optuna does."""

from __future__ import annotations

from typing import Any

import numpy as np
from optuna.study import StudyDirection


def is_pareto_front(losses: np.ndarray) -> np.ndarray:
    """Non-dominated rows of a loss matrix, duplicates of a front point included."""
    from optuna.study._multi_objective import _is_pareto_front  # what best_trials uses

    return _is_pareto_front(losses, assume_unique_lexsorted=False)


def normalize_value(value: float | None, direction: StudyDirection) -> float:
    """An objective value as a loss (maximised values negated, None as +inf)."""
    from optuna.study._multi_objective import _normalize_value  # best_trials' own rule

    return _normalize_value(value, direction)


def non_domination_rank(loss: np.ndarray, n_below: int) -> np.ndarray:
    """Non-domination rank of each row, ranked at least until `n_below` rows are placed."""
    from optuna.study._multi_objective import _fast_non_domination_rank  # TPE's ranking

    return _fast_non_domination_rank(loss, n_below=n_below)


def hypervolume(front: np.ndarray, reference: np.ndarray) -> float:
    """Hypervolume of a Pareto front (losses) up to a reference point."""
    from optuna._hypervolume import compute_hypervolume  # no public hypervolume of points

    return float(compute_hypervolume(front, reference, assume_pareto=True))


def constraints_from_system_attrs(attrs: dict[str, Any]) -> dict[str, float]:
    """`FrozenTrial.constraints` from a trial's stored system attrs."""
    from optuna.study._constrained_optimization import (  # how FrozenTrial reads them
        _get_constraints_from_system_attrs,
    )

    return _get_constraints_from_system_attrs(attrs)
