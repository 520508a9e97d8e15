"""Optuna's RDBStorage with batched writes and one read per sampling pass.

Overrides the private `_set_trial_param` and `_get_trials` (every `suggest_*` and every
trial read of the samplers goes through them), and writes with Optuna's own ORM models
and session helper so the rows and checks are exactly Optuna's.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.storages import RDBStorage

__all__ = ["BatchingRDBStorage"]


@dataclass
class _Pass:
    storage: BatchingRDBStorage
    trial_id: int
    params: list[tuple[Any, ...]] = field(default_factory=list)
    user: dict[str, Any] = field(default_factory=dict)
    system: dict[str, Any] = field(default_factory=dict)
    # (study id, states) -> (trial ids asked for, ids above which all were, the trials)
    reads: dict[tuple[Any, ...], tuple[frozenset[int], int, list[optuna.trial.FrozenTrial]]] = \
        field(default_factory=dict)


_LOCAL = threading.local()


def _open_pass() -> _Pass | None:
    return getattr(_LOCAL, "sampling", None)


class BatchingRDBStorage(RDBStorage):
    """RDBStorage whose writes within a sampling pass go to the database in one commit, and
    whose trial reads within the pass come from one snapshot (`begin_pass`/`end_pass`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # (study id, parameter) -> the JSON of a distribution stored for it: parameters
        # are never deleted, and every later one must be compatible with the first.
        self._dists: dict[tuple[int, str], str] = {}

    # --- the pass --------------------------------------------------------------------

    def begin_pass(self, trial_id: int) -> bool:
        """Open a pass for `trial_id` in this thread; False if one is open already."""
        if _open_pass() is not None:
            return False
        _LOCAL.sampling = _Pass(self, trial_id)
        return True

    def end_pass(self) -> None:
        """Write what the open pass holds, in one commit, and close it."""
        try:
            self._flush_pass()
        finally:
            _LOCAL.sampling = None

    def _pass(self, trial_id: int) -> _Pass | None:
        p = _open_pass()
        return p if p is not None and p.storage is self and p.trial_id == trial_id else None

    def _flush_pass(self) -> None:
        p = _open_pass()
        if p is None or p.storage is not self or not (p.params or p.user or p.system):
            return
        params, user, system = p.params, p.user, p.system
        p.params, p.user, p.system = [], {}, {}
        self._write(p.trial_id, params, user, system)

    # --- writes ----------------------------------------------------------------------

    def delete_study(self, study_id: int) -> None:
        super().delete_study(study_id)
        self._dists = {k: v for k, v in self._dists.items() if k[0] != study_id}

    def set_trial_attrs(self, trial_id: int, user: Mapping[str, Any],
                        system: Mapping[str, Any]) -> None:
        """Several attrs of one trial in one transaction (Optuna commits once per attr)."""
        if not self._buffered(trial_id, user, system):
            self._write(trial_id, [], user, system)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        if not self._buffered(trial_id, {key: value}, {}):
            super().set_trial_user_attr(trial_id, key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        if not self._buffered(trial_id, {}, {key: value}):
            super().set_trial_system_attr(trial_id, key, value)

    def _buffered(self, trial_id: int, user: Mapping[str, Any],
                  system: Mapping[str, Any]) -> bool:
        """Hold the attrs for the pass's commit if a pass of this trial is open."""
        p = self._pass(trial_id)
        if p is not None:
            p.user.update(user)
            p.system.update(system)
        return p is not None

    def _set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                         distribution: Any, previous_distribution: Any) -> None:
        # Private in Optuna: the one method every suggest_* writes through.
        p = self._pass(trial_id)
        if p is None:
            super()._set_trial_param(trial_id, param_name, param_value_internal, distribution,
                                     previous_distribution)
            return
        if previous_distribution is not None:  # checked now, as Optuna would
            optuna.distributions.check_distribution_compatibility(previous_distribution,
                                                                  distribution)
        p.params.append((param_name, param_value_internal, distribution,
                         previous_distribution))

    def _write(self, trial_id: int, params: list[tuple[Any, ...]], user: Mapping[str, Any],
               system: Mapping[str, Any]) -> None:
        """Optuna's `_set_trial_param_without_commit` and `_set_trial_attr_without_commit`
        for many values in one transaction, with one lookup of the trial instead of one per
        value, a parameter's first stored distribution remembered instead of queried per
        suggest, and the attrs as one multi-row upsert. The rows and checks are Optuna's."""
        import sqlalchemy
        from optuna.storages._rdb import models  # Optuna's ORM: its tables, its rows
        from optuna.storages._rdb.storage import (  # Optuna's commit/rollback wrapper
            _create_scoped_session,
        )

        with _create_scoped_session(self.scoped_session) as session, session.no_autoflush:
            trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
            self.check_trial_is_updatable(trial_id, trial.state)
            study_id = trial.study_id
            known: dict[str, str] = {}
            rows = []
            for name, value, dist, previous in params:
                # A `previous` distribution was checked when the value was buffered.
                stored = None if previous is not None else self._first_distribution(
                    session, study_id, name)
                if stored is not None:
                    optuna.distributions.check_distribution_compatibility(
                        optuna.distributions.json_to_distribution(stored), dist)
                as_json = optuna.distributions.distribution_to_json(dist)
                known.setdefault(name, as_json)
                rows.append({"trial_id": trial_id, "param_name": name, "param_value": value,
                             "distribution_json": as_json})
            if rows:
                # One executemany. Optuna ignores a duplicate parameter row (a race between
                # its own writers); in one batch that would drop every write with it, so
                # the unique constraint fails the trial instead.
                session.execute(sqlalchemy.insert(models.TrialParamModel), rows)
            for model, attrs in ((models.TrialUserAttributeModel, user),
                                 (models.TrialSystemAttributeModel, system)):
                self._upsert_attrs(session, model, trial, attrs)
        for name, as_json in known.items():  # committed: later suggests need not ask
            self._dists.setdefault((study_id, name), as_json)

    def _first_distribution(self, session: Any, study_id: int, name: str) -> str | None:
        from optuna.storages._rdb import models  # Optuna's ORM: its tables

        cached = self._dists.get((study_id, name))
        if cached is not None:
            return cached
        row = (session.query(models.TrialParamModel.distribution_json)
               .join(models.TrialModel)
               .filter(models.TrialModel.study_id == study_id)
               .filter(models.TrialParamModel.param_name == name)
               .first())
        if row is None:
            return None
        self._dists[(study_id, name)] = str(row[0])
        return str(row[0])

    def _upsert_attrs(self, session: Any, model: Any, trial: Any,
                      attrs: Mapping[str, Any]) -> None:
        """One INSERT ... ON CONFLICT UPDATE for all of a trial's new attrs (what Optuna
        runs per attr); Optuna's own per-attr path on other databases."""
        if not attrs:
            return
        dialect = self.engine.name
        rows = [{"trial_id": trial.trial_id, "key": k, "value_json": json.dumps(v)}
                for k, v in attrs.items()]
        if dialect == "postgresql" or (dialect == "sqlite"
                                       and sqlite3.sqlite_version_info >= (3, 24, 0)):
            if dialect == "sqlite":
                from sqlalchemy.dialects.sqlite import insert
            else:
                from sqlalchemy.dialects.postgresql import insert
            stmt = insert(model).values(rows)
            session.execute(stmt.on_conflict_do_update(
                index_elements=[model.trial_id, model.key],
                set_={"value_json": stmt.excluded.value_json}))
        elif dialect == "mysql":
            from sqlalchemy.dialects.mysql import insert as mysql_insert

            mstmt = mysql_insert(model).values(rows)
            session.execute(mstmt.on_duplicate_key_update(value_json=mstmt.inserted.value_json))
        else:
            for key, value in attrs.items():
                # Optuna's private per-attr write, inside our session.
                self._set_trial_attr_without_commit(session, model, trial.trial_id, key, value)

    # --- reads -----------------------------------------------------------------------

    def count_trials(self, study_id: int, states: tuple[Any, ...]) -> int:
        """One COUNT query (Optuna's count reads every new trial's rows through its cache)."""
        import sqlalchemy
        from optuna.storages._rdb import models  # Optuna's ORM: its tables
        from optuna.storages._rdb.storage import (  # Optuna's commit/rollback wrapper
            _create_scoped_session,
        )

        with _create_scoped_session(self.scoped_session) as session:
            return int(session.query(sqlalchemy.func.count(models.TrialModel.trial_id))
                       .filter(models.TrialModel.study_id == study_id,
                               models.TrialModel.state.in_(states)).scalar() or 0)

    def get_trial(self, trial_id: int) -> optuna.trial.FrozenTrial:
        if self._pass(trial_id) is not None:
            self._flush_pass()  # read your own writes
        return super().get_trial(trial_id)

    def _get_trials(self, study_id: int, states: Any, included_trial_ids: set[int],
                    trial_id_greater_than: int) -> list[optuna.trial.FrozenTrial]:
        # Private in Optuna: the one read behind get_all_trials and its trial cache.
        p = _open_pass()
        if p is None or p.storage is not self:
            return super()._get_trials(study_id, states, included_trial_ids,
                                       trial_id_greater_than)
        # One snapshot per pass: a later read asking only for trials the first one
        # covered (its running trials, or newer ones) is answered from it. Optuna's cache
        # asks again for the trials the first read found running, this one among them.
        key = (study_id, None if states is None else tuple(sorted(s.value for s in states)))
        snap = p.reads.get(key)
        if snap is not None:
            covered, after, trials = snap
            if trial_id_greater_than >= after and all(
                    i in covered or i > after for i in included_trial_ids):
                return [t for t in trials if t._trial_id in included_trial_ids
                        or t._trial_id > trial_id_greater_than]
        self._flush_pass()
        trials = super()._get_trials(study_id, states, included_trial_ids,
                                     trial_id_greater_than)
        p.reads[key] = (frozenset(included_trial_ids), trial_id_greater_than, trials)
        return trials
