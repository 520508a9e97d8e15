"""Storage URLs: resolution, validation, redaction, and opening Optuna storages.

`sqlite:///studies.db` in the working directory by default (`CSEARCH_STORAGE` and
`--storage` override it). PostgreSQL and MySQL are for many workers; `journal:///path`
is Optuna's journal file. RDB storages run with a heartbeat so killed workers' trials
are failed and retried.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import optuna
from optuna.storages import BaseStorage, RetryHeartbeatStaleTrialCallback

from .errors import StorageError, StudyNotFound

__all__ = [
    "DEFAULT_STORAGE",
    "HEARTBEAT_INTERVAL",
    "GRACE_PERIOD",
    "resolve_url",
    "redact",
    "backend_of",
    "open_storage",
    "artifact_dir_for",
    "load_study",
    "set_trial_attrs",
    "sampling_pass",
    "count_trials",
    "close_storages",
    "restarting",
    "error_chain",
    "retry_while_restarting",
    "WORKER_START_WAIT",
]

DEFAULT_STORAGE = "sqlite:///studies.db"
# Seconds between a running trial's heartbeats, and without one before it counts as stale.
# The environment may shorten them (tests do).
HEARTBEAT_INTERVAL = int(os.environ.get("CSEARCH_HEARTBEAT_INTERVAL", "10"))
GRACE_PERIOD = int(os.environ.get("CSEARCH_GRACE_PERIOD", "30"))
MAX_RETRY = 3  # how often a trial of a killed worker is retried
SQLITE_TIMEOUT = 60  # busy timeout: many workers on one SQLite file wait, not fail

_SCHEMES = ("sqlite", "postgresql", "mysql", "journal")


def resolve_url(storage: str | None) -> str:
    """--storage, else CSEARCH_STORAGE, else studies.db in the working directory."""
    url = storage or os.environ.get("CSEARCH_STORAGE") or DEFAULT_STORAGE
    # Like SQLAlchemy: scheme:///relative and scheme:////absolute; store absolute paths so
    # spawned workers and the artifact store agree whatever their working directory.
    for scheme in ("sqlite:///", "journal:///"):
        if url.startswith(scheme) and not url.startswith(scheme + "/"):
            rel = url[len(scheme) :]
            if rel and rel != ":memory:":
                url = scheme + str(Path(rel.split("?", 1)[0]).resolve())
    return url


def redact(url: str) -> str:
    """The URL with any password replaced by ***, safe to print and log."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def backend_of(url: str) -> str:
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme == "postgres":
        return "postgresql"
    if scheme == "mariadb":
        return "mysql"
    return scheme


def _file_path(url: str) -> Path | None:
    """The file of a sqlite:/// or journal:/// URL (None for in-memory)."""
    rest = url.split(":///", 1)[1] if ":///" in url else ""
    if not rest or rest == ":memory:":
        return None
    return Path(rest.split("?", 1)[0])


def _check_sqlite(url: str, create: bool) -> None:
    path = _file_path(url)
    if path is None:
        return
    if path.exists():
        if path.is_dir():
            raise StorageError(f"storage {url}: {path} is a directory, not a SQLite file")
        with open(path, "rb") as f:
            head = f.read(16)
        if head and head != b"SQLite format 3\x00":
            raise StorageError(
                f"storage {url}: {path} is not a SQLite database (corrupt or another "
                "format); it was left untouched"
            )
        return
    if not create:
        raise StorageError(f"no database at {path} (storage {url}); run `csearch run` first")
    if not path.parent.is_dir():
        raise StorageError(f"storage {url}: directory {path.parent} does not exist")


def _normalise(url: str) -> str:
    backend = backend_of(url)
    scheme, sep, rest = url.partition("://")
    if backend == "postgresql" and "+" not in scheme:
        return "postgresql+psycopg://" + rest
    if backend == "mysql" and "+" not in scheme:
        return "mysql+pymysql://" + rest
    return url


def _engine_kwargs(url: str) -> dict[str, Any]:
    backend = backend_of(url)
    if backend == "sqlite":
        return {"connect_args": {"timeout": SQLITE_TIMEOUT}}
    # Bounded pool, and connections checked before use so a restarted server is survived.
    kw: dict[str, Any] = {"pool_pre_ping": True, "pool_size": 2, "max_overflow": 2,
                          "pool_recycle": 3600}
    if backend == "postgresql":
        # application_name lets an operator map connections to workers (pg_stat_activity).
        kw["connect_args"] = {"connect_timeout": 10,
                              "application_name": f"csearch-{os.getpid()}"}
    if backend == "mysql":
        kw["connect_args"] = {"connect_timeout": 10}
    return kw


def open_storage(url: str, *, create: bool = False, heartbeat: bool = True) -> BaseStorage:
    """Open (and, with `create`, initialise) the storage at `url`.

    Read-only commands pass `create=False` so that a mistyped path creates nothing.
    """
    backend = backend_of(url)
    if backend not in _SCHEMES:
        raise StorageError(
            f"unsupported storage URL {redact(url)!r}; use sqlite:///FILE, "
            "postgresql://USER@HOST/DB, mysql://USER@HOST/DB or journal:///FILE"
        )
    if backend == "journal":
        return _open_journal(url, create)
    if backend == "sqlite":
        _check_sqlite(url, create)
    try:
        parts = urlsplit(url)
        if backend != "sqlite" and not parts.hostname and "host=" not in url:
            raise StorageError(f"storage URL {redact(url)!r} names no host")
    except ValueError as e:
        raise StorageError(f"malformed storage URL {redact(url)!r}: {e}") from None
    if not create and backend != "sqlite":
        _check_tables(url)
    hb: dict[str, Any] = {}
    if heartbeat:
        hb = {
            "heartbeat_interval": HEARTBEAT_INTERVAL,
            "grace_period": GRACE_PERIOD,
            "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(
                max_retry=MAX_RETRY
            ),
        }
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = _ResilientRDBStorage(
                _normalise(url),
                engine_kwargs=_engine_kwargs(url),
                skip_table_creation=not create,
                **hb,
            )
        if backend == "sqlite" and _file_path(url) is not None:
            _use_wal(storage)
        _OPENED.add(storage)
        return storage
    except StorageError:
        raise
    except Exception as e:  # sqlalchemy and driver errors: one line, password hidden
        raise StorageError(
            f"cannot open storage {redact(url)}: {_short(e)}"
        ) from None


class _ResilientRDBStorage(optuna.storages.RDBStorage):
    """RDBStorage whose heartbeat survives a database outage.

    Optuna records heartbeats from a thread that dies on the first database error, so
    after a server restart a live trial would look stale and be failed by other workers.
    Here a failed heartbeat is skipped; the next one goes through once the server is back.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # (study id, parameter) -> the JSON of a distribution stored for it: parameters
        # are never deleted, and every later one must be compatible with the first.
        self._dists: dict[tuple[int, str], str] = {}

    def delete_study(self, study_id: int) -> None:
        super().delete_study(study_id)
        self._dists = {k: v for k, v in self._dists.items() if k[0] != study_id}

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except Exception:  # noqa: BLE001 - any database error; retried at the next beat
            pass

    def set_trial_attrs(self, trial_id: int, user: Mapping[str, Any],
                        system: Mapping[str, Any]) -> None:
        """Several attrs of one trial in one transaction (Optuna commits once per attr)."""
        if not self._buffered(trial_id, user, system):
            self._write(trial_id, [], user, system)

    def _write(self, trial_id: int, params: list[tuple[Any, ...]], user: Mapping[str, Any],
               system: Mapping[str, Any]) -> None:
        """Optuna's `_set_trial_param_without_commit` and `_set_trial_attr_without_commit`
        for many values in one transaction, with one lookup of the trial instead of one per
        value, a parameter's first stored distribution remembered instead of queried per
        suggest, and the attrs as one multi-row upsert. The rows and checks are Optuna's."""
        import sqlalchemy
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

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
        from optuna.storages._rdb import models

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
        import json

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
                self._set_trial_attr_without_commit(session, model, trial.trial_id, key, value)

    def count_trials(self, study_id: int, states: tuple[Any, ...]) -> int:
        """One COUNT query (Optuna's count reads every new trial's rows through its cache)."""
        import sqlalchemy
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        with _create_scoped_session(self.scoped_session) as session:
            return int(session.query(sqlalchemy.func.count(models.TrialModel.trial_id))
                       .filter(models.TrialModel.study_id == study_id,
                               models.TrialModel.state.in_(states)).scalar() or 0)

    # --- the sampling pass (see `sampling_pass`) ---------------------------------------

    def _pass(self, trial_id: int) -> _SamplingPass | None:
        p: _SamplingPass | None = getattr(_LOCAL, "sampling", None)
        return p if p is not None and p.storage is self and p.trial_id == trial_id else None

    def _flush_pass(self) -> None:
        p: _SamplingPass | None = getattr(_LOCAL, "sampling", None)
        if p is None or p.storage is not self or not (p.params or p.user or p.system):
            return
        params, user, system = p.params, p.user, p.system
        p.params, p.user, p.system = [], {}, {}
        self._write(p.trial_id, params, user, system)

    def _set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                         distribution: Any, previous_distribution: Any) -> None:
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

    def get_trial(self, trial_id: int) -> optuna.trial.FrozenTrial:
        if self._pass(trial_id) is not None:
            self._flush_pass()  # read your own writes
        return super().get_trial(trial_id)

    def _get_trials(self, study_id: int, states: Any, included_trial_ids: set[int],
                    trial_id_greater_than: int) -> list[optuna.trial.FrozenTrial]:
        p: _SamplingPass | None = getattr(_LOCAL, "sampling", None)
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


_LOCAL = threading.local()
_OPENED: weakref.WeakSet[_ResilientRDBStorage] = weakref.WeakSet()


def close_storages() -> None:
    """Close the connections of every storage this process opened. At the end of a
    command: a SQLite file is then checkpointed, so it holds every write by itself
    (no -wal file left beside it), whatever the interpreter's exit skips."""
    for storage in list(_OPENED):
        storage.engine.dispose()


@dataclass
class _SamplingPass:
    storage: _ResilientRDBStorage
    trial_id: int
    params: list[tuple[Any, ...]] = field(default_factory=list)
    user: dict[str, Any] = field(default_factory=dict)
    system: dict[str, Any] = field(default_factory=dict)
    # (study id, states) -> (trial ids asked for, ids above which all were, the trials)
    reads: dict[tuple[Any, ...], tuple[frozenset[int], int, list[optuna.trial.FrozenTrial]]] = \
        field(default_factory=dict)


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
    backend = getattr(storage, "_backend", storage)  # Optuna wraps RDB in _CachedStorage
    if not isinstance(backend, _ResilientRDBStorage) or getattr(_LOCAL, "sampling", None):
        yield
        return
    _LOCAL.sampling = _SamplingPass(backend, trial_id)
    try:
        yield
    finally:
        try:
            backend._flush_pass()
        finally:
            _LOCAL.sampling = None


def count_trials(storage: BaseStorage, study_id: int, states: tuple[Any, ...]) -> int:
    """How many trials of the study are in `states`, cheaply where the storage has SQL."""
    backend = getattr(storage, "_backend", storage)
    if isinstance(backend, _ResilientRDBStorage):
        return backend.count_trials(study_id, states)
    return len(storage.get_all_trials(study_id, deepcopy=False, states=states))


def set_trial_attrs(storage: BaseStorage, trial_id: int, user: Mapping[str, Any] | None = None,
                    system: Mapping[str, Any] | None = None) -> None:
    """Write a trial's user and system attrs together: one commit on csearch's RDB storages
    (a trial's bookkeeping was ~30 commits, see benchmarks/RESULTS.md), one call per attr
    on any other storage. Either way the trial ends up with exactly the same attrs."""
    user, system = user or {}, system or {}
    backend = getattr(storage, "_backend", storage)  # Optuna wraps RDB in _CachedStorage
    if isinstance(backend, _ResilientRDBStorage):
        backend.set_trial_attrs(trial_id, user, system)
        return
    for key, value in user.items():
        storage.set_trial_user_attr(trial_id, key, value)
    for key, value in system.items():
        storage.set_trial_system_attr(trial_id, key, value)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _use_wal(storage: Any) -> None:
    """SQLite in WAL mode with synchronous=NORMAL: a commit no longer waits for an fsync
    (every suggest, user attr and constraint is a commit; this halves csearch's per-trial
    overhead, see benchmarks/RESULTS.md), and readers stop blocking the writer when
    several workers share the file. A crash of the process loses nothing; a power loss can
    lose the last commits (the local spool still holds evaluated results)."""
    import sqlalchemy

    sqlalchemy.event.listen(storage.engine, "connect", _sqlite_pragmas)
    storage.engine.dispose()  # connections opened before the listener reopen with it


def _check_tables(url: str) -> None:
    """Refuse to read a reachable database that holds no Optuna tables (and create none)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(_normalise(url), **_engine_kwargs(url))
    try:
        with engine.connect() as conn:
            has = sqlalchemy.inspect(conn).has_table("studies")
    except Exception as e:
        raise StorageError(f"cannot open storage {redact(url)}: {_short(e)}") from None
    finally:
        engine.dispose()
    if not has:
        raise StorageError(f"storage {redact(url)} holds no studies yet (no Optuna tables)")


# What a database server that is restarting looks like to a client (PostgreSQL's
# shutdown and start-up states, the connection it drops or refuses meanwhile).
_RESTARTING = (
    "terminating connection due to administrator command",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "server closed the connection unexpectedly",
    "Connection refused",
)
# How long a starting worker waits for such a database (a restart takes seconds; a
# mistyped port then costs this long before its error).
WORKER_START_WAIT = float(os.environ.get("CSEARCH_WORKER_START_WAIT", "20"))
_T = TypeVar("_T")


def error_chain(e: BaseException | None, limit: int = 10) -> Iterator[BaseException]:
    """An error, then the one it was raised from or while handling, and so on (at most
    `limit`): drivers' errors reach csearch wrapped by SQLAlchemy and Optuna."""
    while e is not None and limit > 0:
        yield e
        e = e.__cause__ or e.__context__
        limit -= 1


def restarting(e: BaseException | None) -> bool:
    """Whether an error (or one it was raised from or while handling) looks like a
    database server that is restarting rather than a wrong address or a missing study."""
    return any(any(s in str(x) for s in _RESTARTING) for x in error_chain(e))


def retry_while_restarting(fn: Callable[[], _T], wait_s: float) -> _T:
    """`fn()`, tried again while the database is restarting, for up to `wait_s` seconds:
    a worker started during a database restart joins when it is back."""
    deadline = time.monotonic() + wait_s
    delay = 0.5
    while True:
        try:
            return fn()
        except Exception as e:
            if not restarting(e) or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _short(e: BaseException) -> str:
    text = str(getattr(e, "orig", None) or e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    line = re.sub(r"\(Background on this error.*", "", line)
    return redact(line)[:300]


def _open_journal(url: str, create: bool) -> BaseStorage:
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    path = _file_path(url)
    if path is None:
        raise StorageError(f"journal storage {url!r} must look like journal:///FILE")
    if not path.exists() and not create:
        raise StorageError(f"no journal file at {path} (storage {url})")
    if not path.parent.is_dir():
        raise StorageError(f"storage {url}: directory {path.parent} does not exist")
    try:
        return JournalStorage(JournalFileBackend(str(path)))
    except Exception as e:
        raise StorageError(f"cannot open journal {path}: {_short(e)}") from None


def artifact_dir_for(url: str) -> Path:
    """Default artifact store: beside a SQLite or journal file, else ./csearch-artifacts."""
    env = os.environ.get("CSEARCH_ARTIFACTS")
    if env:
        return Path(env).resolve()
    backend = backend_of(url)
    if backend in ("sqlite", "journal"):
        path = _file_path(url)
        if path is not None:
            return path.parent / f"{path.stem}-artifacts"
    return Path("csearch-artifacts").resolve()


def load_study(storage: BaseStorage, name: str) -> optuna.Study:
    """The named study, or StudyNotFound naming the studies that exist. Here, not in
    study.py, so read-only commands (pareto, trials, studies) never import torch."""
    names = [s.study_name for s in storage.get_all_studies()]
    if name not in names:
        hint = f"; studies here: {', '.join(names)}" if names else "; this storage has no studies"
        raise StudyNotFound(f"no study named {name!r}{hint}")
    return optuna.load_study(study_name=name, storage=storage)
