"""Storages: URLs, opening and retries, write batching, snapshot reads, artifact paths.

Laid out as Optuna's `storages/`: `urls` (resolve, redact, backend, artifact paths),
`backends` (open, validate, close), `retry` (database restarts), `batching` (one commit
per trial pass) and `snapshot` (fast reads of a study's trials).
"""

from __future__ import annotations

from .backends import (
    GRACE_PERIOD,
    HEARTBEAT_INTERVAL,
    ResilientRDBStorage,
    check_sqlite,
    close_storages,
    load_study,
    open_storage,
)
from .batching import budget_lock, count_trials, sampling_pass, set_trial_attrs
from .retry import WORKER_START_WAIT, error_chain, restarting, retry_while_restarting
from .snapshot import ObjectiveRows, rdb_storage, read_objectives, read_trials
from .urls import DEFAULT_STORAGE, artifact_dir_for, backend_of, file_path, redact, resolve_url

__all__ = [
    "DEFAULT_STORAGE",
    "GRACE_PERIOD",
    "HEARTBEAT_INTERVAL",
    "WORKER_START_WAIT",
    "ObjectiveRows",
    "ResilientRDBStorage",
    "artifact_dir_for",
    "backend_of",
    "budget_lock",
    "check_sqlite",
    "close_storages",
    "count_trials",
    "error_chain",
    "file_path",
    "load_study",
    "open_storage",
    "rdb_storage",
    "read_objectives",
    "read_trials",
    "redact",
    "resolve_url",
    "restarting",
    "retry_while_restarting",
    "sampling_pass",
    "set_trial_attrs",
]
