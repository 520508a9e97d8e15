"""A user attr on a trial that has already finished.

Optuna's API refuses to change a finished trial, but some measurements come after it: a
load test of the trial's model served for real (`csearch loadtest --trial N`) is stored
on the trial it measured. On an RDB storage the attr row is written as Optuna writes it,
in Optuna's own user-attribute table (a private model: the reason this lives here).
"""

from __future__ import annotations

import json
from typing import Any

import optuna

from ..errors import StorageError

__all__ = ["set_finished_user_attr"]


def set_finished_user_attr(storage: optuna.storages.BaseStorage, trial_id: int, key: str,
                           value: Any) -> None:
    """Set user attr `key` of trial `trial_id`, finished or not (RDB storages only)."""
    import sqlalchemy as sa
    from optuna.storages._rdb import models  # the user-attribute table (see above)

    backend = getattr(storage, "_backend", storage)  # Optuna wraps RDB in _CachedStorage
    if not isinstance(backend, optuna.storages.RDBStorage):
        raise StorageError(
            f"storing {key!r} on a finished trial needs an SQL storage, not "
            f"{type(backend).__name__}"
        )
    table = models.TrialUserAttributeModel.__table__
    with backend.engine.begin() as conn:  # delete + insert: one portable upsert
        conn.execute(sa.delete(table).where(table.c.trial_id == trial_id, table.c.key == key))
        conn.execute(sa.insert(table), {"trial_id": trial_id, "key": key,
                                        "value_json": json.dumps(value)})
