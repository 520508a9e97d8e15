"""csearch's registry tables, beside Optuna's in the study database (SQLAlchemy Core).

Versions (`csearch_model_versions`) hold the metadata; the packed model's bytes live in
`csearch_model_blobs`, keyed by sha256 and cut into chunks that fit MySQL's default packet
limit. `csearch_model_events` is the promote/rollback log; the `production` alias is
derived from it, so moving the alias is one insert. Unique keys on (name, version) and
(name, seq) make concurrent writers retry instead of writing duplicates.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    inspect,
)
from sqlalchemy.dialects import mysql

CHUNK_BYTES = 4 * 1024 * 1024  # below MySQL's 16 MiB max_allowed_packet default

_TEXT = Text().with_variant(mysql.LONGTEXT(), "mysql")
_BLOB = LargeBinary().with_variant(mysql.LONGBLOB(), "mysql")
_TIME = DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")  # UTC, naive

metadata = MetaData()

versions = Table(
    "csearch_model_versions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(255), nullable=False),
    Column("version", Integer, nullable=False),
    Column("study", String(512), nullable=False),
    Column("trial", Integer, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("workload", _TEXT, nullable=False),
    Column("params_json", _TEXT, nullable=False),
    Column("serve_json", _TEXT, nullable=False),
    Column("metrics_json", _TEXT, nullable=False),
    Column("meta_json", _TEXT, nullable=False),  # export's csearch.json: rebuilds the model
    Column("created_at", _TIME, nullable=False),
    UniqueConstraint("name", "version", name="csearch_model_versions_name_version"),
)

blobs = Table(
    "csearch_model_blobs", metadata,
    Column("sha256", String(64), primary_key=True),
    Column("chunk", Integer, primary_key=True, autoincrement=False),
    Column("data", _BLOB, nullable=False),
)

events = Table(
    "csearch_model_events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(255), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("action", String(16), nullable=False),  # promote | rollback
    Column("version", Integer, nullable=False),  # production after the event
    Column("previous", Integer, nullable=True),  # production before it
    Column("created_at", _TIME, nullable=False),
    UniqueConstraint("name", "seq", name="csearch_model_events_name_seq"),
)


def exist(engine: Any) -> bool:
    """Whether the registry's tables are there (reads never create them)."""
    with engine.connect() as conn:
        names = set(inspect(conn).get_table_names())
    return {t.name for t in metadata.sorted_tables} <= names


def create(engine: Any) -> None:
    """Create the tables that are missing; a concurrent creator's win is fine."""
    try:
        metadata.create_all(engine, checkfirst=True)
    except Exception:
        if not exist(engine):  # not another process creating them at the same moment
            raise
