"""Reading a study's trials for the read-only commands, fast on RDB storages.

On RDB storages the rows are read with one plain select per table (`_optuna.tables`)
instead of Optuna's ORM, which builds and expires an object per row; for the Pareto
front only objective values and constraints are read, so full trials are loaded for the
front alone. Any other storage (in-memory, journal) goes through `Study.get_trials`;
tests check that both paths return equal trials on every backend.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

import optuna
from optuna.trial import FrozenTrial, TrialState

from .._optuna import (
    read_objective_rows,
    read_trial_rows,
    storage_of,
    study_id_of,
    trial_id_of,
    unwrap_storage,
)

__all__ = ["rdb_storage", "read_trials", "ObjectiveRows", "read_objectives"]


def rdb_storage(study: optuna.Study) -> optuna.storages.RDBStorage | None:
    """The study's RDBStorage (under Optuna's cache), or None for any other storage."""
    storage = unwrap_storage(storage_of(study))
    return storage if isinstance(storage, optuna.storages.RDBStorage) else None


def read_trials(study: optuna.Study, states: Iterable[TrialState] | None = None,
                trial_ids: Collection[int] | None = None) -> list[FrozenTrial]:
    """`study.get_trials(deepcopy=False, states=states)`, optionally only the trials with
    these storage ids, ordered by trial id; the same `FrozenTrial`s, several times faster
    on RDB storages. The trials are fresh objects, free to modify."""
    states = None if states is None else tuple(states)
    storage = rdb_storage(study)
    if storage is not None:
        return read_trial_rows(storage, study_id_of(study), states, trial_ids)
    trials = study.get_trials(deepcopy=False, states=states)
    if trial_ids is not None:
        wanted = set(trial_ids)
        trials = [t for t in trials if trial_id_of(t) in wanted]
    return trials


@dataclass
class ObjectiveRows:
    """The COMPLETE trials of a study as the Pareto front needs them: id, number,
    objective values and constraint values (Optuna's `FrozenTrial.constraints`)."""

    trial_ids: list[int] = field(default_factory=list)
    numbers: list[int] = field(default_factory=list)
    values: list[list[float] | None] = field(default_factory=list)
    constraints: list[dict[str, float]] = field(default_factory=list)

    def add(self, trial_id: int, number: int, values: list[float] | None,
            constraints: dict[str, float]) -> None:
        self.trial_ids.append(trial_id)
        self.numbers.append(number)
        self.values.append(values)
        self.constraints.append(constraints)


def read_objectives(study: optuna.Study) -> ObjectiveRows:
    """Values and constraints of the study's COMPLETE trials, in trial-id order, without
    reading their params and user attrs on RDB storages."""
    out = ObjectiveRows()
    storage = rdb_storage(study)
    if storage is not None:
        for row in read_objective_rows(storage, study_id_of(study)):
            out.add(*row)
        return out
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        out.add(trial_id_of(t), t.number, t.values, t.constraints)
    return out
