"""Opening a SQLite storage again in a process that already has it open (a server's
registry, a benchmark, a notebook) must leave that process's SQLite locks in place.
POSIX drops every lock a process holds on a file when it closes any descriptor of it; a
connection that lost its lock lets another process delete the WAL under it, and its
later commits are lost (seen: promote events that vanished, a malformed database)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

from search.storage import check_sqlite, open_storage

# Whether another process could take SQLite's EXCLUSIVE lock on the file now: it
# write-locks the SHARED byte range that every open connection read-locks.
_PROBE = """
import fcntl, sys
with open(sys.argv[1], "r+b") as f:
    try:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 510, 0x40000002)
        print("free")
    except OSError:
        print("held")
"""


def _others_see(path) -> str:
    return subprocess.run([sys.executable, "-c", _PROBE, str(path)], capture_output=True,
                          text=True, check=True).stdout.strip()


def test_checking_a_storage_keeps_the_locks_of_this_processs_connections(tmp_path):
    path = tmp_path / "studies.db"
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")  # as csearch's storages run
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.execute("SELECT * FROM t").fetchall()  # in WAL mode the SHARED lock stays held
    assert _others_see(path) == "held"
    check_sqlite(f"sqlite:///{path}", create=False)
    assert _others_see(path) == "held"
    con.close()


def test_opening_the_same_storage_twice_keeps_the_first_ones_locks(tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    first = open_storage(url, create=True, heartbeat=False)
    with first.engine.connect() as conn:  # a pooled connection, as a long-lived process has
        conn.exec_driver_sql("SELECT count(*) FROM sqlite_master").fetchall()
        held = _others_see(tmp_path / "studies.db")
        open_storage(url, create=False, heartbeat=False)
        assert _others_see(tmp_path / "studies.db") == held == "held"
