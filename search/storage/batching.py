"""Fewer commits and reads per trial on csearch's RDB storages, the same data on any."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from optuna.storages import BaseStorage

from .._optuna import BatchingRDBStorage, unwrap_storage

__all__ = ["sampling_pass", "set_trial_attrs", "count_trials", "budget_lock"]


@contextmanager
def sampling_pass(storage: BaseStorage, trial_id: int) -> Iterator[None]:
    """While a live trial samples its parameters (and notes who evaluates it), or stores
    its results: its writes go to the database in one commit when the block ends, and the
    sampler's reads of the study's trials come from one read.

    Optuna commits every `suggest_*` on its own, and the default grouped TPE with the
    constant liar re-reads every trial once per parameter group; together that was most
    of a trial's bookkeeping (benchmarks/overhead.py). Reading once per sampling pass is
    what Optuna's own per-trial trial cache does for the other samplers. Within the block
    a read of the trial itself first writes what is pending. Storages other than csearch's
    RDB storage are left as they are.
    """
    backend = unwrap_storage(storage)
    if not isinstance(backend, BatchingRDBStorage) or not backend.begin_pass(trial_id):
        yield
        return
    try:
        yield
    finally:
        backend.end_pass()


def count_trials(storage: BaseStorage, study_id: int, states: tuple[Any, ...]) -> int:
    """How many trials of the study are in `states`, cheaply where the storage has SQL."""
    backend = unwrap_storage(storage)
    if isinstance(backend, BatchingRDBStorage):
        return backend.count_trials(study_id, states)
    return len(storage.get_all_trials(study_id, deepcopy=False, states=states))


@contextmanager
def budget_lock(storage: BaseStorage, study_id: int) -> Iterator[None]:
    """Hold the study's budget lock: one worker at a time counts the trials and creates the
    next one, so workers sharing a study stop at exactly its budget instead of each
    starting one more trial past it. A PostgreSQL advisory lock or a MySQL named lock, on
    a connection of its own; for a SQLite file (local workers on one machine), a file
    lock beside it; on other storages (one process: in-memory, journal files, a gRPC
    proxy) nothing to lock."""
    import sqlalchemy

    backend = unwrap_storage(storage)
    engine = getattr(backend, "engine", None)
    dialect = engine.dialect.name if engine is not None else ""
    if dialect == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        with _file_lock(f"{engine.url.database}.csearch-lock"):
            yield
        return
    if dialect not in ("postgresql", "mysql"):
        yield
        return
    key = _LOCK_BASE + int(study_id)
    lock, unlock = _LOCKS[dialect]
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(lock), {"k": key})
        try:
            yield
        finally:
            conn.execute(sqlalchemy.text(unlock), {"k": key})
            conn.commit()


@contextmanager
def _file_lock(path: str) -> Iterator[None]:
    """An exclusive `flock` on `path` (created if missing); no lock where there is no
    `fcntl` (Windows)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


_LOCK_BASE = 0x6373_0000_0000  # "cs": keeps csearch's advisory locks apart from others'
_LOCKS = {
    "postgresql": ("SELECT pg_advisory_lock(:k)", "SELECT pg_advisory_unlock(:k)"),
    "mysql": ("SELECT GET_LOCK(CONCAT('csearch-budget-', :k), 600)",
              "SELECT RELEASE_LOCK(CONCAT('csearch-budget-', :k))"),
}


def set_trial_attrs(storage: BaseStorage, trial_id: int, user: Mapping[str, Any] | None = None,
                    system: Mapping[str, Any] | None = None) -> None:
    """Write a trial's user and system attrs together: one commit on csearch's RDB storages,
    one call per attr on any other storage. Either way the trial ends up with exactly the
    same attrs."""
    user, system = user or {}, system or {}
    backend = unwrap_storage(storage)
    if isinstance(backend, BatchingRDBStorage):
        backend.set_trial_attrs(trial_id, user, system)
        return
    for key, value in user.items():
        storage.set_trial_user_attr(trial_id, key, value)
    for key, value in system.items():
        storage.set_trial_system_attr(trial_id, key, value)
