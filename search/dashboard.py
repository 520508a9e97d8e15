"""optuna-dashboard on a csearch storage, with the study's artifact store attached.

Feasibility in optuna-dashboard 0.21: its pages read a trial's constraints only from the
list-valued `constraints` system attr (written by `runner.TrialObjective` besides Optuna
5's `trial.set_constraint`), and its plots (Pareto front, history, timeline) grey out and
leave off the front any trial with a value > 0 there. Its server-side `best_trials` of a
multi-objective study, however, is the Pareto front of *all* complete trials, infeasible
ones included; `serve` makes it the feasible front, the same as `csearch pareto`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from .results import is_feasible

__all__ = ["artifact_store_for", "feasible_pareto_front", "patch_feasible_best_trials", "serve"]


def artifact_store_for(study: optuna.Study) -> Any:
    """The study's FileSystemArtifactStore, or None when it has no artifact directory."""
    from optuna.artifacts import FileSystemArtifactStore

    from .spec import stored_spec

    art = stored_spec(study).artifacts
    if art and os.path.isdir(art):
        return FileSystemArtifactStore(art)
    return None


def feasible_pareto_front(trials: Sequence[FrozenTrial], directions: Sequence[Any],
                          _front: Any = None) -> list[FrozenTrial]:
    """The dashboard's Pareto front computed on feasible trials only."""
    if _front is None:
        from optuna_dashboard._pareto_front import get_pareto_front_trials as _front
    return _front([t for t in trials if is_feasible(t) is not False], directions)


def patch_feasible_best_trials() -> None:
    """Make optuna-dashboard's `best_trials` (multi-objective) exclude infeasible trials."""
    import optuna_dashboard._app as app

    if getattr(app.get_pareto_front_trials, "_csearch_feasible", False):
        return
    original = app.get_pareto_front_trials

    def front(trials: Sequence[FrozenTrial], directions: Sequence[Any]) -> list[FrozenTrial]:
        return feasible_pareto_front(trials, directions, original)

    front._csearch_feasible = True  # type: ignore[attr-defined]
    app.get_pareto_front_trials = front


def serve(study: optuna.Study, host: str = "127.0.0.1", port: int = 8080,
          artifact_store: Any = None) -> None:
    """Run optuna-dashboard (blocking) on the study's storage."""
    import optuna_dashboard

    patch_feasible_best_trials()
    optuna_dashboard.run_server(study._storage, host=host, port=port,
                                artifact_store=artifact_store)
