"""A worker that starts while the database restarts waits for it; other errors are not
retried (a missing study or a bad URL ends the command at once)."""

from __future__ import annotations

import pytest
import sqlalchemy.exc

from search.errors import StorageError, StudyNotFound
from search.storage import restarting, retry_while_restarting


def _admin_shutdown() -> sqlalchemy.exc.OperationalError:
    return sqlalchemy.exc.OperationalError(
        "SELECT 1", {}, Exception("terminating connection due to administrator command"))


def test_a_restarting_database_is_waited_for():
    calls = []

    def start():
        calls.append(1)
        if len(calls) < 3:
            raise _admin_shutdown()
        return "joined"

    assert retry_while_restarting(start, wait_s=10) == "joined"
    assert len(calls) == 3


def test_the_restart_is_recognised_through_csearchs_own_error():
    try:
        try:
            raise _admin_shutdown()
        except sqlalchemy.exc.OperationalError as e:
            raise StorageError(f"cannot open storage postgresql://h/db: {e.orig}") from None
    except StorageError as wrapped:
        assert restarting(wrapped)


def test_other_errors_are_not_retried_and_the_wait_is_bounded():
    calls = []

    def missing():
        calls.append(1)
        raise StudyNotFound("no study named 'x'")

    with pytest.raises(StudyNotFound):
        retry_while_restarting(missing, wait_s=10)
    assert len(calls) == 1

    def down():
        calls.append(1)
        raise _admin_shutdown()

    with pytest.raises(sqlalchemy.exc.OperationalError):
        retry_while_restarting(down, wait_s=0.1)  # gives up once the wait is spent
