"""Identifiers Optuna keeps private on its public objects."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial


def trial_id_of(trial: FrozenTrial | optuna.Trial) -> int:
    """The storage's id of a trial (storages address trials by it, not by number)."""
    return trial._trial_id  # FrozenTrial and Trial expose no public trial id


def storage_of(study: optuna.Study) -> BaseStorage:
    """The storage a study reads and writes."""
    return study._storage  # Study exposes no public storage


def study_id_of(study: optuna.Study) -> int:
    """The storage's id of a study."""
    return study._study_id  # Study exposes no public study id


def unwrap_storage(storage: BaseStorage) -> BaseStorage:
    """The storage under Optuna's trial cache (`_CachedStorage` wraps every RDBStorage)."""
    return getattr(storage, "_backend", storage)  # the wrapper keeps its backend private


def stale_trial_ids_of(storage: BaseStorage, study_id: int) -> list[int]:
    """RUNNING trials whose heartbeat is older than the grace period (none without one)."""
    from optuna.storages._heartbeat import BaseHeartbeat  # heartbeat storages' private base

    if not isinstance(storage, BaseHeartbeat) or not storage.get_heartbeat_interval():
        return []
    return list(storage._get_stale_trial_ids(study_id))  # BaseHeartbeat's query is private


def note_attrs(trial: optuna.Trial, user: dict[str, Any], system: dict[str, Any]) -> None:
    """Keep a live trial's `user_attrs` in step with attrs written to its storage directly
    (Trial.set_user_attr updates its private frozen copy the same way)."""
    cached = getattr(trial, "_cached_frozen_trial", None)  # Trial's private frozen copy
    if cached is not None:
        cached.user_attrs.update(user)
        cached.system_attrs.update(system)


def is_enqueued(trial: FrozenTrial) -> bool:
    """Whether the trial came from `Study.enqueue_trial` (its fixed params win over any
    sampler's suggestion)."""
    return bool(trial.system_attrs.get("fixed_params"))  # Optuna's private attr name


def contains(dist: BaseDistribution, value: Any) -> bool:
    """Whether a distribution can return `value` (Optuna's check is private)."""
    try:
        return bool(dist._contains(dist.to_internal_repr(value)))
    except (TypeError, ValueError):
        return False
