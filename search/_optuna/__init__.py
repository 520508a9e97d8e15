"""The only place csearch touches private names of Optuna.

Optuna's private modules and attributes change without notice between minor releases,
so every use is here, each with a one-line reason, and pyproject pins the tested minor
version (`benchmarks/optuna_newest.sh` runs the storage and sampler equivalence tests
against the newest release). The rest of csearch imports the public wrappers below.
"""

from __future__ import annotations

from .access import (
    contains,
    is_enqueued,
    note_attrs,
    stale_trial_ids_of,
    storage_of,
    study_id_of,
    trial_id_of,
    unwrap_storage,
)
from .artifacts import upload_named_artifact
from .grpc import HEARTBEAT_ATTR, HeartbeatGrpcStorage
from .multi_objective import (
    constraints_from_system_attrs,
    hypervolume,
    is_pareto_front,
    non_domination_rank,
    normalize_value,
)
from .rdb import BatchingRDBStorage
from .tables import read_objective_rows, read_trial_rows
from .tpe import WindowedTPESampler

__all__ = [
    "BatchingRDBStorage",
    "HEARTBEAT_ATTR",
    "HeartbeatGrpcStorage",
    "WindowedTPESampler",
    "constraints_from_system_attrs",
    "contains",
    "hypervolume",
    "is_enqueued",
    "is_pareto_front",
    "non_domination_rank",
    "normalize_value",
    "note_attrs",
    "read_objective_rows",
    "read_trial_rows",
    "stale_trial_ids_of",
    "storage_of",
    "study_id_of",
    "trial_id_of",
    "unwrap_storage",
    "upload_named_artifact",
]
