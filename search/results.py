"""Study results as plain data: trial rows, the feasible Pareto front, study summaries.

These are what `csearch trials/pareto/studies --format json` print and what the report
draws; nothing here formats text.
"""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial, TrialState

from .spec import SPEC_ATTR

__all__ = ["is_feasible", "trial_row", "trial_rows", "pareto_rows", "study_summaries",
           "stale_trial_ids"]


def is_feasible(t: FrozenTrial) -> bool | None:
    """True/False for a trial with constraints, None when it has none (e.g. FAIL)."""
    cons = t.constraints
    if not cons:
        return None if t.state != TrialState.COMPLETE else True
    return all(v <= 0 for v in cons.values())


def stale_trial_ids(study: optuna.Study) -> set[int]:
    """RUNNING trials whose worker stopped sending heartbeats (died, or was SIGKILLed).

    Optuna fails them only when a live worker starts its next trial; until then the
    listings show them as stale rather than as running.
    """
    storage = study._storage
    if not isinstance(storage, BaseHeartbeat) or not storage.get_heartbeat_interval():
        return set()
    ids = set(storage._get_stale_trial_ids(study._study_id))
    return {t.number for t in study.get_trials(deepcopy=False) if t._trial_id in ids}


def _num(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def trial_row(t: FrozenTrial, stale: bool = False) -> dict[str, Any]:
    metrics = t.user_attrs.get("metrics", {})
    row: dict[str, Any] = {
        "number": t.number,
        "state": t.state.name,
        "params": t.params,
        "metrics": {k: _num(v) for k, v in metrics.items()},
        "values": [_num(v) for v in t.values] if t.values else None,
        "feasible": is_feasible(t),
        "stale": stale,
        "constraints": {k: v for k, v in t.constraints.items() if not k.isdigit()},
        "datetime_start": t.datetime_start.isoformat() if t.datetime_start else None,
        "datetime_complete": t.datetime_complete.isoformat() if t.datetime_complete else None,
        "duration_s": t.duration.total_seconds() if t.duration else None,
        "worker": t.user_attrs.get("worker"),
    }
    for key in ("fail_reason", "pruned_reason"):
        if key in t.user_attrs:
            row["reason"] = t.user_attrs[key]
    return row


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    stale = stale_trial_ids(study)
    return [trial_row(t, t.number in stale) for t in study.get_trials(deepcopy=False)]


def pareto_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """The feasible Pareto front (Optuna's `best_trials` excludes infeasible trials)."""
    if len(study.directions) == 1:
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        feasible = [t for t in complete if is_feasible(t) is not False]
        if not feasible:
            return []
        sign = 1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1
        best = max(feasible, key=lambda t: sign * t.value)
        trials = [best]
    else:
        trials = sorted(study.best_trials, key=lambda t: t.number)
    return [
        {k: trial_row(t)[k] for k in ("number", "params", "metrics", "values", "feasible")}
        for t in trials
    ]


def study_summaries(storage: BaseStorage) -> list[dict[str, Any]]:
    out = []
    for s in storage.get_all_studies():
        study = optuna.load_study(study_name=s.study_name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        counts: dict[str, int] = {}
        stale = stale_trial_ids(study)
        for t in trials:
            state = "STALE" if t.number in stale else t.state.name
            counts[state] = counts.get(state, 0) + 1
        spec = s.user_attrs.get(SPEC_ATTR, {})
        front = pareto_rows(study) if trials else []
        names = study.metric_names or [f"objective{i}" for i in range(len(study.directions))]
        best: dict[str, float | None] = {}
        for i, (name, d) in enumerate(zip(names, study.directions)):
            vals = [r["values"][i] for r in front if r["values"]]
            pick = max if d == optuna.study.StudyDirection.MAXIMIZE else min
            best[name] = pick(vals) if vals else None
        # Optuna 5's FrozenStudy has no datetime_start: the study started with its first trial.
        started = min((t.datetime_start for t in trials if t.datetime_start), default=None)
        out.append({
            "name": s.study_name,
            "workload": spec.get("workload"),
            "space": spec.get("space"),
            "objectives": spec.get("objectives"),
            "budget": spec.get("trials"),
            "trials": len(trials),
            "states": counts,
            "pareto_size": len(front),
            "best": best,
            "datetime_start": started.isoformat() if started else None,
        })
    return out
