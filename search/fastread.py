"""Reading a study's trials for the read-only commands, fast on RDB storages.

Optuna's `RDBStorage.get_all_trials` builds an ORM object per trial, parameter and
attribute and then expires them all on commit: on a 10,000-trial SQLite study that is
~8 s of the ~10 s `csearch pareto` took. Here the same rows are read with plain
SQLAlchemy Core selects over Optuna's schema (one per table) and assembled into the same
`FrozenTrial`s (`read_trials`), or, for the Pareto front, only objective values and
constraints are read (`read_objectives`) so that full trials are loaded for the front
alone. Any other storage (in-memory, journal) goes through `Study.get_trials`; tests
check that both paths return equal trials on every backend.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

__all__ = ["rdb_storage", "read_trials", "ObjectiveRows", "read_objectives"]

_CONSTRAINTS_KEY = "constraints"  # Optuna's system attr: legacy list, and "constraints:NAME"
_CHUNK = 500  # ids per IN (...) list, well below every backend's bound-parameter limit


def rdb_storage(study: optuna.Study) -> optuna.storages.RDBStorage | None:
    """The study's RDBStorage (under Optuna's cache), or None for any other storage."""
    storage = study._storage
    storage = getattr(storage, "_backend", storage)  # _CachedStorage wraps RDBStorage
    return storage if isinstance(storage, optuna.storages.RDBStorage) else None


def _local(utc: datetime | None) -> datetime | None:
    """Optuna stores naive UTC and hands out naive local time (TrialModel.datetime_*)."""
    if utc is None:
        return None
    return utc.replace(tzinfo=timezone.utc).astimezone().replace(tzinfo=None)


def _chunks(ids: list[int]) -> Iterator[list[int]]:
    for i in range(0, len(ids), _CHUNK):
        yield ids[i : i + _CHUNK]


class _Reader:
    """One connection for all the selects of a read, one snapshot on PostgreSQL and MySQL.
    (On SQLite each select sees the latest commit; rows of trials that the first select
    did not return are ignored, so a trial written meanwhile is simply not listed.)"""

    def __init__(self, storage: optuna.storages.RDBStorage):
        self.storage = storage

    def __enter__(self) -> _Reader:
        self.conn = self.storage.engine.connect()
        if self.storage.engine.name in ("postgresql", "mysql"):
            # The child tables must describe the same trials as the trials select.
            self.conn = self.conn.execution_options(isolation_level="REPEATABLE READ")
        self.conn.begin()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.conn.rollback()  # read only
        self.conn.close()

    def trials(self, study_id: int, states: Iterable[TrialState] | None,
               trial_ids: Collection[int] | None) -> list[Any]:
        import sqlalchemy as sa
        from optuna.storages._rdb import models as m

        T = m.TrialModel
        q = sa.select(T.trial_id, T.number, T.state, T._datetime_start_utc,
                      T._datetime_complete_utc).where(T.study_id == study_id)
        if states is not None:
            q = q.where(T.state.in_(list(states)))
        if trial_ids is None:
            return list(self.conn.execute(q.order_by(T.trial_id)))
        rows = []
        for chunk in _chunks(sorted(trial_ids)):
            rows.extend(self.conn.execute(q.where(T.trial_id.in_(chunk))))
        return sorted(rows, key=lambda r: r[0])

    def children(self, model: Any, columns: list[str], study_id: int,
                 states: Iterable[TrialState] | None, ids: list[int] | None,
                 where: Any = None, order: Any = None) -> Iterator[Any]:
        """Rows (trial_id, *columns) of a per-trial table, for the study's trials in
        `states`, or for the trials `ids` when given."""
        import sqlalchemy as sa
        from optuna.storages._rdb import models as m

        cols = [model.trial_id, *[getattr(model, c) for c in columns]]
        q = sa.select(*cols)
        if where is not None:
            q = q.where(where)
        if order is not None:  # within a trial; by trial first, which the indexes serve
            q = q.order_by(model.trial_id, order)
        if ids is not None:
            for chunk in _chunks(ids):
                yield from self.conn.execute(q.where(model.trial_id.in_(chunk)))
            return
        q = q.join(m.TrialModel, m.TrialModel.trial_id == model.trial_id).where(
            m.TrialModel.study_id == study_id)
        if states is not None:
            q = q.where(m.TrialModel.state.in_(list(states)))
        yield from self.conn.execute(q)


def _values(r: _Reader, study_id: int, states: Iterable[TrialState] | None,
            ids: list[int] | None) -> dict[int, list[float]]:
    """Objective values by trial id; as RDBStorage, a list as long as the stored values."""
    from optuna.storages._rdb import models as m

    pairs: dict[int, list[tuple[int, float]]] = {}
    for tid, objective, value, kind in r.children(
            m.TrialValueModel, ["objective", "value", "value_type"], study_id, states, ids):
        pairs.setdefault(tid, []).append(
            (objective, m.TrialValueModel.stored_repr_to_value(value, kind)))
    out = {}
    for tid, got in pairs.items():
        vals: list[float] = [0] * len(got)  # int 0 where one is missing, as Optuna
        for objective, v in got:
            vals[objective] = v
        out[tid] = vals
    return out


def read_trials(study: optuna.Study, states: Iterable[TrialState] | None = None,
                trial_ids: Collection[int] | None = None) -> list[FrozenTrial]:
    """`study.get_trials(deepcopy=False, states=states)`, optionally only the trials with
    these `_trial_id`s, ordered by trial id; the same `FrozenTrial`s, several times faster
    on RDB storages. The trials are fresh objects, free to modify."""
    states = None if states is None else tuple(states)
    storage = rdb_storage(study)
    if storage is None:
        trials = study.get_trials(deepcopy=False, states=states)
        if trial_ids is not None:
            wanted = set(trial_ids)
            trials = [t for t in trials if t._trial_id in wanted]
        return trials
    from optuna.distributions import json_to_distribution
    from optuna.storages._rdb import models as m

    with _Reader(storage) as r:
        rows = r.trials(study._study_id, states, trial_ids)
        ids = None if trial_ids is None else [row[0] for row in rows]
        if not rows:
            return []
        known = {row[0] for row in rows}
        values = _values(r, study._study_id, states, ids)
        params: dict[int, dict[str, Any]] = {tid: {} for tid in known}
        dists: dict[int, dict[str, Any]] = {tid: {} for tid in known}
        parsed: dict[str, Any] = {}  # a study has a handful of distinct distributions
        for tid, name, value, dist_json in r.children(
                m.TrialParamModel, ["param_name", "param_value", "distribution_json"],
                study._study_id, states, ids, order=m.TrialParamModel.param_id):
            if tid not in known:
                continue
            dist = parsed.get(dist_json)
            if dist is None:
                dist = parsed[dist_json] = json_to_distribution(dist_json)
            params[tid][name] = dist.to_external_repr(value)
            dists[tid][name] = dist
        attrs = []
        # Keys in order, as Optuna's own read of SQLite returns them (its unique index
        # on trial_id, key); the order shows in `csearch trials --format json`.
        for model in (m.TrialUserAttributeModel, m.TrialSystemAttributeModel):
            got: dict[int, dict[str, Any]] = {tid: {} for tid in known}
            for tid, key, value_json in r.children(model, ["key", "value_json"],
                                                   study._study_id, states, ids,
                                                   order=model.key):
                if tid in known:
                    got[tid][key] = json.loads(value_json)
            attrs.append(got)
        inter: dict[int, dict[int, float]] = {tid: {} for tid in known}
        I = m.TrialIntermediateValueModel
        for tid, step, value, kind in r.children(
                I, ["step", "intermediate_value", "intermediate_value_type"],
                study._study_id, states, ids):
            if tid in known:
                inter[tid][step] = I.stored_repr_to_intermediate_value(value, kind)
    out = []
    for tid, number, state, start, complete in rows:
        out.append(FrozenTrial(
            number=number, state=state, value=None, values=values.get(tid),
            datetime_start=_local(start), datetime_complete=_local(complete),
            params=params[tid], distributions=dists[tid], user_attrs=attrs[0][tid],
            system_attrs=attrs[1][tid], intermediate_values=inter[tid], trial_id=tid))
    return out


@dataclass
class ObjectiveRows:
    """The COMPLETE trials of a study as the Pareto front needs them: id, number,
    objective values and constraint values (Optuna's `FrozenTrial.constraints`)."""

    trial_ids: list[int] = field(default_factory=list)
    numbers: list[int] = field(default_factory=list)
    values: list[list[float] | None] = field(default_factory=list)
    constraints: list[dict[str, float]] = field(default_factory=list)


def read_objectives(study: optuna.Study) -> ObjectiveRows:
    """Values and constraints of the study's COMPLETE trials, in trial-id order, without
    reading their params and user attrs on RDB storages."""
    from optuna.study._constrained_optimization import _get_constraints_from_system_attrs

    out = ObjectiveRows()
    storage = rdb_storage(study)
    if storage is None:
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            out.trial_ids.append(t._trial_id)
            out.numbers.append(t.number)
            out.values.append(t.values)
            out.constraints.append(t.constraints)
        return out
    from optuna.storages._rdb import models as m

    complete = (TrialState.COMPLETE,)
    S = m.TrialSystemAttributeModel
    with _Reader(storage) as r:
        rows = r.trials(study._study_id, complete, None)
        values = _values(r, study._study_id, complete, None)
        # LIKE may ignore case (SQLite): the exact test is below.
        attrs: dict[int, dict[str, Any]] = {}
        for tid, key, value_json in r.children(
                S, ["key", "value_json"], study._study_id, complete, None,
                where=S.key.like(_CONSTRAINTS_KEY + "%"), order=S.key):
            if key == _CONSTRAINTS_KEY or key.startswith(_CONSTRAINTS_KEY + ":"):
                attrs.setdefault(tid, {})[key] = json.loads(value_json)
    for tid, number, _state, _start, _complete in rows:
        out.trial_ids.append(tid)
        out.numbers.append(number)
        out.values.append(values.get(tid))
        out.constraints.append(_get_constraints_from_system_attrs(attrs.get(tid, {})))
    return out
