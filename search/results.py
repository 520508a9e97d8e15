"""Study results as plain data: trial rows, the feasible Pareto front, study summaries.

These are what `csearch trials/pareto/studies --format json` print and what the report
draws; nothing here formats text. Trials are read as one snapshot (`storage.read_trials`),
and the front is found from objective values and constraints alone, so `csearch pareto`
on a 10,000-trial study loads full trials (params, metrics) only for the few on the front.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from . import attrs
from .errors import CsearchError
from ._optuna import (
    is_pareto_front,
    normalize_value,
    stale_trial_ids_of,
    storage_of,
    study_id_of,
    trial_id_of,
)
from .storage import ObjectiveRows, read_objectives, read_trials

__all__ = ["is_feasible", "broken_constraints", "trial_row", "trial_rows", "trial_detail",
           "pareto_rows",
           "study_summaries", "stale_trial_ids", "pareto_mask", "front_trial_ids"]


def is_feasible(t: FrozenTrial) -> bool | None:
    """True/False for a trial with constraints, None when it has none (e.g. FAIL)."""
    cons = t.constraints
    if not cons:
        return None if t.state != TrialState.COMPLETE else True
    return all(v <= 0 for v in cons.values())


def _constraint_metric(name: str) -> str | None:
    """The metric a stored constraint is about: `accuracy_drop<=0.01` -> accuracy_drop;
    csearch's `memory_budget` (packed weights + cache + workspace) -> memory_mb."""
    from .metrics import parse_constraint

    try:
        return parse_constraint(name).metric
    except CsearchError:
        return "memory_mb" if name == "memory_budget" else None


def broken_constraints(t: FrozenTrial) -> list[dict[str, Any]]:
    """The constraints a trial breaks, each with the metric's value and by how much
    (Optuna's constraint value: > 0 is broken)."""
    metrics = t.user_attrs.get(attrs.METRICS) or {}
    out = []
    for name, v in t.constraints.items():
        if name.isdigit() or not v > 0:  # the dashboard's list ("0", "1", ...) repeats them
            continue
        metric = _constraint_metric(name)
        value = metrics.get(metric) if metric else None
        out.append({"constraint": name, "metric": metric, "value": _num(value), "by": v})
    return out


def stale_trial_ids(study: optuna.Study, trials: Sequence[FrozenTrial] | None = None
                    ) -> set[int]:
    """RUNNING trials whose worker stopped sending heartbeats (died, or was SIGKILLed).

    Optuna fails them only when a live worker starts its next trial; until then the
    listings show them as stale rather than as running. `trials`: the study's trials when
    the caller has read them already.
    """
    ids = set(stale_trial_ids_of(storage_of(study), study_id_of(study)))
    if not ids:
        return set()
    if trials is None:
        trials = read_trials(study, trial_ids=ids)
    return {t.number for t in trials if trial_id_of(t) in ids}


def _num(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def trial_row(t: FrozenTrial, stale: bool = False) -> dict[str, Any]:
    metrics = t.user_attrs.get(attrs.METRICS, {})
    row: dict[str, Any] = {
        "number": t.number,
        "state": t.state.name,
        "params": t.params,
        "metrics": {k: _num(v) for k, v in metrics.items()},
        "values": [_num(v) for v in t.values] if t.values else None,
        "feasible": is_feasible(t),
        "stale": stale,
        "constraints": {k: v for k, v in t.constraints.items() if not k.isdigit()},
        "broken": broken_constraints(t),
        "datetime_start": t.datetime_start.isoformat() if t.datetime_start else None,
        "datetime_complete": t.datetime_complete.isoformat() if t.datetime_complete else None,
        "duration_s": t.duration.total_seconds() if t.duration else None,
        "worker": t.user_attrs.get(attrs.WORKER),
        "device": t.user_attrs.get(attrs.DEVICE),
        "gpu": t.user_attrs.get(attrs.GPU),
    }
    for key in (attrs.FAIL_REASON, attrs.PRUNED_REASON):
        if key in t.user_attrs:
            row["reason"] = t.user_attrs[key]
    if t.user_attrs.get(attrs.SERVE_SPLIT):  # measured with this split, not the sampled one
        row["serve_split"] = t.user_attrs[attrs.SERVE_SPLIT]
    return row


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    trials = read_trials(study)
    stale = stale_trial_ids(study, trials)
    return [trial_row(t, t.number in stale) for t in trials]


def trial_detail(study: optuna.Study, number: int) -> dict[str, Any]:
    """One trial as `csearch show` gives it: its row, its values by objective name, and
    every constraint with the metric's value and whether (and by how much) it is broken."""
    from .errors import UsageError

    st = storage_of(study)
    try:
        tid = st.get_trial_id_from_study_id_trial_number(study_id_of(study), number)
    except KeyError:
        n = len(study.get_trials(deepcopy=False))
        raise UsageError(f"study {study.study_name!r} has no trial {number}; "
                         + (f"valid: 0..{n - 1}" if n else "it has no trials")) from None
    t = st.get_trial(tid)
    row = trial_row(t, t.number in stale_trial_ids(study, [t]))
    names = study.metric_names or [f"objective{i}" for i in range(len(study.directions))]
    row["objectives"] = dict(zip(names, row["values"])) if row["values"] else {}
    metrics = row["metrics"]
    cons = []
    for name, v in row["constraints"].items():
        metric = _constraint_metric(name)
        cons.append({"constraint": name, "metric": metric,
                     "value": metrics.get(metric) if metric else None,
                     "margin": _num(v), "broken": v > 0})
    row["constraint_checks"] = cons
    for key in (attrs.PARTIAL_METRICS, attrs.RETRY_OF, attrs.RECOVERED_FROM, attrs.SEEDED,
                attrs.ARTIFACT_ID, attrs.EVAL_SEED):
        if key in t.user_attrs:
            row[key] = t.user_attrs[key]
    return row


def pareto_mask(losses: np.ndarray) -> np.ndarray:
    """Non-dominated rows of a loss matrix (every objective minimised), as Optuna's
    `best_trials` decides them: duplicates of a front point are on the front too."""
    if len(losses) == 0:
        return np.zeros(0, dtype=bool)
    return is_pareto_front(losses)


def front_trial_ids(rows: ObjectiveRows, directions: Sequence[optuna.study.StudyDirection]
                    ) -> list[int]:
    """Trial ids of the feasible Pareto front among complete trials, in trial order.

    The same trials as Optuna's `best_trials` (which drops infeasible trials: any
    constraint value > 0) or, with one objective, the first best feasible trial.
    """
    feasible = [i for i, c in enumerate(rows.constraints) if all(v <= 0 for v in c.values())]
    if not feasible:
        return []
    if len(directions) == 1:
        sign = 1 if directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1
        best = max(feasible, key=lambda i: sign * rows.values[i][0])  # type: ignore[index]
        return [rows.trial_ids[best]]
    if any(len(rows.values[i] or ()) != len(directions) for i in feasible):
        raise ValueError(
            "The number of the values and the number of the objectives must be identical."
        )
    losses = np.asarray([[normalize_value(v, d) for v, d in zip(rows.values[i], directions)]
                         for i in feasible])
    on_front = pareto_mask(losses)
    return [rows.trial_ids[i] for i, on in zip(feasible, on_front) if on]


def _objective_rows(trials: Sequence[FrozenTrial]) -> ObjectiveRows:
    rows = ObjectiveRows()
    for t in trials:
        if t.state == TrialState.COMPLETE:
            rows.add(trial_id_of(t), t.number, t.values, t.constraints)
    return rows


def pareto_rows(study: optuna.Study, trials: Sequence[FrozenTrial] | None = None
                ) -> list[dict[str, Any]]:
    """The feasible Pareto front, by trial number (infeasible trials are never on it).

    Without `trials` (the study's, when the caller has them), only the complete trials'
    values and constraints are read, and then the front trials in full.
    """
    rows = read_objectives(study) if trials is None else _objective_rows(trials)
    ids = set(front_trial_ids(rows, study.directions))
    if trials is None:
        front = read_trials(study, trial_ids=ids) if ids else []
    else:
        front = [t for t in trials if trial_id_of(t) in ids]
    return [
        {k: v for k, v in trial_row(t).items()
         if k in ("number", "params", "metrics", "values", "feasible", "serve_split")}
        for t in sorted(front, key=lambda t: t.number)
    ]


def study_summaries(storage: BaseStorage) -> list[dict[str, Any]]:
    out = []
    for s in storage.get_all_studies():
        study = optuna.load_study(study_name=s.study_name, storage=storage)
        trials = read_trials(study)
        counts: dict[str, int] = {}
        stale = stale_trial_ids(study, trials)
        for t in trials:
            state = "STALE" if t.number in stale else t.state.name
            counts[state] = counts.get(state, 0) + 1
        spec = s.user_attrs.get(attrs.SPEC, {})
        front = pareto_rows(study, trials) if trials else []
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
