"""Opening Optuna storages: validation, engine settings, heartbeats, and closing.

`sqlite:///studies.db` in the working directory by default (`CSEARCH_STORAGE` and
`--storage` override it). PostgreSQL and MySQL are for many workers; `journal:///path`
is Optuna's journal file. RDB storages run with a heartbeat so killed workers' trials
are failed and retried.
"""

from __future__ import annotations

import os
import re
import warnings
import weakref
from typing import Any
from urllib.parse import urlsplit

import optuna
from optuna.storages import BaseStorage, RetryHeartbeatStaleTrialCallback

from .._optuna import BatchingRDBStorage
from ..errors import StorageError, StudyNotFound
from .urls import backend_of, file_path, redact

__all__ = ["HEARTBEAT_INTERVAL", "GRACE_PERIOD", "ResilientRDBStorage", "check_sqlite",
           "open_storage", "close_storages", "load_study"]

# Seconds between a running trial's heartbeats, and without one before it counts as stale.
# The environment may shorten them (tests do).
HEARTBEAT_INTERVAL = int(os.environ.get("CSEARCH_HEARTBEAT_INTERVAL", "10"))
GRACE_PERIOD = int(os.environ.get("CSEARCH_GRACE_PERIOD", "30"))
MAX_RETRY = 3  # how often a trial of a killed worker is retried
SQLITE_TIMEOUT = 60  # busy timeout: many workers on one SQLite file wait, not fail

_SCHEMES = ("sqlite", "postgresql", "mysql", "journal", "grpc")
GRPC_EXTRA = "pip install csearch[grpc]"
PROXY_WAIT = float(os.environ.get("CSEARCH_PROXY_WAIT", "20"))  # seconds to reach a proxy


def check_sqlite(url: str, create: bool) -> None:
    """Refuse a SQLite URL whose file is not a SQLite database, or (without `create`)
    does not exist; nothing is created."""
    path = file_path(url)
    if path is None:
        return
    if path.exists():
        if path.is_dir():
            raise StorageError(f"storage {url}: {path} is a directory, not a SQLite file")
        if not _is_sqlite(path):
            raise StorageError(
                f"storage {url}: {path} is not a SQLite database (corrupt or another "
                "format); it was left untouched"
            )
        return
    if not create:
        raise StorageError(f"no database at {path} (storage {url}); run `csearch run` first")
    if not path.parent.is_dir():
        raise StorageError(f"storage {url}: directory {path.parent} does not exist")


def _is_sqlite(path: Any) -> bool:
    """Whether SQLite reads `path` as a database (an empty file is one), asked of SQLite
    itself, read-only. Never open() and close() the file directly: closing any descriptor
    of it drops every POSIX lock this process holds on it, SQLite connections' included,
    and another process may then delete the WAL under them, losing their commits
    (sqlite.org/howtocorrupt.html, 2.2)."""
    import sqlite3

    try:
        con = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    except sqlite3.Error:
        return False
    try:
        con.execute("PRAGMA schema_version").fetchone()
        return True
    except sqlite3.OperationalError:  # busy or locked: a database, in use
        return True
    except sqlite3.DatabaseError:  # "file is not a database"
        return False
    finally:
        con.close()


def _normalise(url: str) -> str:
    backend = backend_of(url)
    scheme, sep, rest = url.partition("://")
    if backend == "postgresql" and "+" not in scheme:
        return "postgresql+psycopg://" + rest
    if backend == "mysql" and "+" not in scheme:
        return "mysql+pymysql://" + rest
    return url


def _engine_kwargs(url: str, pool_size: int | None = None) -> dict[str, Any]:
    backend = backend_of(url)
    if backend == "sqlite":
        return {"connect_args": {"timeout": SQLITE_TIMEOUT}}
    # Bounded pool, and connections checked before use so a restarted server is survived.
    # A given pool size (the storage proxy's) is a hard limit: no overflow.
    kw: dict[str, Any] = {"pool_pre_ping": True, "pool_size": pool_size or 2,
                          "max_overflow": 0 if pool_size else 2, "pool_recycle": 3600}
    if backend == "postgresql":
        # application_name lets an operator map connections to workers (pg_stat_activity).
        kw["connect_args"] = {"connect_timeout": 10,
                              "application_name": f"csearch-{os.getpid()}"}
    if backend == "mysql":
        kw["connect_args"] = {"connect_timeout": 10}
    return kw


def _heartbeat_kwargs() -> dict[str, Any]:
    return {
        "heartbeat_interval": HEARTBEAT_INTERVAL,
        "grace_period": GRACE_PERIOD,
        "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
    }


def open_storage(url: str, *, create: bool = False, heartbeat: bool = True,
                 pool_size: int | None = None) -> BaseStorage:
    """Open (and, with `create`, initialise) the storage at `url`.

    Read-only commands pass `create=False` so that a mistyped path creates nothing.
    `pool_size` caps the database connections of this process (default 2, 2 overflow).
    """
    backend = backend_of(url)
    if backend not in _SCHEMES:
        raise StorageError(
            f"unsupported storage URL {redact(url)!r}; use sqlite:///FILE, "
            "postgresql://USER@HOST/DB, mysql://USER@HOST/DB, journal:///FILE or "
            "grpc://HOST:PORT (a `csearch proxy`)"
        )
    if backend == "journal":
        return _open_journal(url, create)
    if backend == "grpc":
        return _open_grpc(url, heartbeat)
    if backend == "sqlite":
        check_sqlite(url, create)
    try:
        parts = urlsplit(url)
        if backend != "sqlite" and not parts.hostname and "host=" not in url:
            raise StorageError(f"storage URL {redact(url)!r} names no host")
    except ValueError as e:
        raise StorageError(f"malformed storage URL {redact(url)!r}: {e}") from None
    if not create and backend != "sqlite":
        _check_tables(url)
    hb = _heartbeat_kwargs() if heartbeat else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = ResilientRDBStorage(
                _normalise(url),
                engine_kwargs=_engine_kwargs(url, pool_size),
                skip_table_creation=not create,
                **hb,
            )
        if backend == "sqlite" and file_path(url) is not None:
            _use_wal(storage)
        _OPENED.add(storage)
        return storage
    except StorageError:
        raise
    except Exception as e:  # sqlalchemy and driver errors: one line, password hidden
        raise StorageError(
            f"cannot open storage {redact(url)}: {_short(e)}"
        ) from None


class ResilientRDBStorage(BatchingRDBStorage):
    """RDBStorage whose heartbeat survives a database outage.

    Optuna records heartbeats from a thread that dies on the first database error, so
    after a server restart a live trial would look stale and be failed by other workers.
    Here a failed heartbeat is skipped; the next one goes through once the server is back.
    """

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except Exception:  # noqa: BLE001 - any database error; retried at the next beat
            pass


_OPENED: weakref.WeakSet[Any] = weakref.WeakSet()


def close_storages() -> None:
    """Close the connections of every storage this process opened. At the end of a
    command: a SQLite file is then checkpointed, so it holds every write by itself
    (no -wal file left beside it), whatever the interpreter's exit skips."""
    for storage in list(_OPENED):
        if isinstance(storage, ResilientRDBStorage):
            storage.engine.dispose()
        else:
            storage.close()  # a gRPC channel


def grpc_address(url: str) -> tuple[str, int]:
    """HOST and PORT of a grpc://HOST:PORT storage URL."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError as e:
        raise StorageError(f"malformed storage URL {url!r}: {e}") from None
    if not host or port is None or parts.path not in ("", "/"):
        raise StorageError(f"storage URL {url!r}: a proxy's URL is grpc://HOST:PORT")
    return host, port


def _open_grpc(url: str, heartbeat: bool) -> BaseStorage:
    """The client of a `csearch proxy`, with csearch's heartbeat (see _optuna/grpc.py)."""
    host, port = grpc_address(url)
    try:
        import grpc  # noqa: F401
    except ImportError:
        raise StorageError(f"storage {url}: the gRPC proxy client needs grpcio; "
                           f"{GRPC_EXTRA}") from None
    from .._optuna import HeartbeatGrpcStorage

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = HeartbeatGrpcStorage(host=host, port=port,
                                       **(_heartbeat_kwargs() if heartbeat else {}))
    try:
        storage.wait_server_ready(timeout=PROXY_WAIT)
    except ConnectionError:
        storage.close()
        raise StorageError(f"no storage proxy answers at {url} (waited {PROXY_WAIT:g} s); "
                           "start one with `csearch proxy --storage URL --port "
                           f"{port}`") from None
    _OPENED.add(storage)
    return storage


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _use_wal(storage: Any) -> None:
    """SQLite in WAL mode with synchronous=NORMAL: a commit no longer waits for an fsync
    (every suggest, user attr and constraint is a commit), and readers stop blocking the
    writer when several workers share the file. A crash of the process loses nothing; a
    power loss can lose the last commits (the local spool still holds evaluated results)."""
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


def _short(e: BaseException) -> str:
    text = str(getattr(e, "orig", None) or e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    line = re.sub(r"\(Background on this error.*", "", line)
    return redact(line)[:300]


def _open_journal(url: str, create: bool) -> BaseStorage:
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    path = file_path(url)
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


def load_study(storage: BaseStorage, name: str) -> optuna.Study:
    """The named study, or StudyNotFound naming the studies that exist. Here, not in
    study.py, so read-only commands (pareto, trials, studies) never import torch."""
    names = [s.study_name for s in storage.get_all_studies()]
    if name not in names:
        hint = f"; studies here: {', '.join(names)}" if names else "; this storage has no studies"
        raise StudyNotFound(f"no study named {name!r}{hint}")
    return optuna.load_study(study_name=name, storage=storage)
