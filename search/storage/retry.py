"""Telling a restarting database server from a wrong address, and waiting for it."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

__all__ = ["WORKER_START_WAIT", "error_chain", "restarting", "retry_while_restarting"]

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
