"""Optuna's trials read with plain SQLAlchemy Core selects over Optuna's tables.

Optuna's `RDBStorage.get_all_trials` builds an ORM object per trial, parameter and
attribute and expires them all on commit; these selects (one per table) read the same
rows and assemble the same `FrozenTrial`s several times faster. Reading Optuna's schema
directly is private by nature; tests/storage compares the result with Optuna's own reads.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from .multi_objective import constraints_from_system_attrs

__all__ = ["read_trial_rows", "read_objective_rows"]

_CONSTRAINTS_KEY = "constraints"  # Optuna's system attr: legacy list, and "constraints:NAME"
_CHUNK = 500  # ids per IN (...) list, well below every backend's bound-parameter limit


def _local(utc: datetime | None) -> datetime | None:
    """Optuna stores naive UTC and hands out naive local time (TrialModel.datetime_*)."""
    if utc is None:
        return None
    return utc.replace(tzinfo=UTC).astimezone().replace(tzinfo=None)


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
        from optuna.storages._rdb import models as m  # Optuna's tables

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
        from optuna.storages._rdb import models as m  # Optuna's tables

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
    from optuna.storages._rdb import models as m  # Optuna's tables

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


def read_trial_rows(storage: optuna.storages.RDBStorage, study_id: int,
                    states: tuple[TrialState, ...] | None,
                    trial_ids: Collection[int] | None) -> list[FrozenTrial]:
    """The study's trials in `states` (or those with these ids), ordered by trial id, as
    `get_all_trials(deepcopy=False)` returns them; fresh objects, free to modify."""
    from optuna.distributions import json_to_distribution
    from optuna.storages._rdb import models as m  # Optuna's tables

    with _Reader(storage) as r:
        rows = r.trials(study_id, states, trial_ids)
        ids = None if trial_ids is None else [row[0] for row in rows]
        if not rows:
            return []
        known = {row[0] for row in rows}
        values = _values(r, study_id, states, ids)
        params: dict[int, dict[str, Any]] = {tid: {} for tid in known}
        dists: dict[int, dict[str, Any]] = {tid: {} for tid in known}
        parsed: dict[str, Any] = {}  # a study has a handful of distinct distributions
        for tid, name, value, dist_json in r.children(
                m.TrialParamModel, ["param_name", "param_value", "distribution_json"],
                study_id, states, ids, order=m.TrialParamModel.param_id):
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
                                                   study_id, states, ids,
                                                   order=model.key):
                if tid in known:
                    got[tid][key] = json.loads(value_json)
            attrs.append(got)
        inter: dict[int, dict[int, float]] = {tid: {} for tid in known}
        inter_model = m.TrialIntermediateValueModel
        for tid, step, value, kind in r.children(
                inter_model, ["step", "intermediate_value", "intermediate_value_type"],
                study_id, states, ids):
            if tid in known:
                inter[tid][step] = inter_model.stored_repr_to_intermediate_value(value, kind)
    out = []
    for tid, number, state, start, complete in rows:
        out.append(FrozenTrial(
            number=number, state=state, value=None, values=values.get(tid),
            datetime_start=_local(start), datetime_complete=_local(complete),
            params=params[tid], distributions=dists[tid], user_attrs=attrs[0][tid],
            system_attrs=attrs[1][tid], intermediate_values=inter[tid], trial_id=tid))
    return out




def read_objective_rows(storage: optuna.storages.RDBStorage, study_id: int
                        ) -> list[tuple[int, int, list[float] | None, dict[str, float]]]:
    """(trial id, number, values, constraints) of the study's COMPLETE trials, in trial-id
    order, without reading their params and user attrs."""
    from optuna.storages._rdb import models as m  # Optuna's tables

    complete = (TrialState.COMPLETE,)
    S = m.TrialSystemAttributeModel
    with _Reader(storage) as r:
        rows = r.trials(study_id, complete, None)
        values = _values(r, study_id, complete, None)
        # LIKE may ignore case (SQLite): the exact test is below.
        attrs: dict[int, dict[str, Any]] = {}
        for tid, key, value_json in r.children(
                S, ["key", "value_json"], study_id, complete, None,
                where=S.key.like(_CONSTRAINTS_KEY + "%"), order=S.key):
            if key == _CONSTRAINTS_KEY or key.startswith(_CONSTRAINTS_KEY + ":"):
                attrs.setdefault(tid, {})[key] = json.loads(value_json)
    out = []
    for tid, number, _state, _start, _complete in rows:
        out.append((tid, number, values.get(tid),
                    constraints_from_system_attrs(attrs.get(tid, {}))))
    return out
