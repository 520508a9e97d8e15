"""Heartbeats through Optuna's gRPC storage proxy.

`GrpcStorageProxy` is not a heartbeat storage: its API has no heartbeat call, so Optuna
neither beats for a running trial nor fails a stale one through it, and a worker killed
behind the proxy would leave its trial RUNNING forever. Here the heartbeat is a trial
system attr (the worker's clock, written every interval), and a RUNNING trial whose
attr (or start, before the first beat) is older than the grace period is stale. Workers'
clocks must agree to well within the grace period (NTP does).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from optuna.storages import GrpcStorageProxy
from optuna.storages._heartbeat import BaseHeartbeat  # the private base Optuna checks for
from optuna.trial import TrialState

__all__ = ["HEARTBEAT_ATTR", "HeartbeatGrpcStorage"]

HEARTBEAT_ATTR = "csearch:heartbeat"  # unix time of the trial's last beat


class HeartbeatGrpcStorage(GrpcStorageProxy, BaseHeartbeat):
    """The gRPC proxy client, with heartbeats kept in a trial system attr."""

    def __init__(self, *, host: str, port: int, heartbeat_interval: int | None = None,
                 grace_period: int | None = None,
                 heartbeat_stale_trial_callback: Callable[..., None] | None = None) -> None:
        super().__init__(host=host, port=port)
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period or (2 * heartbeat_interval if heartbeat_interval
                                             else None)
        self.heartbeat_stale_trial_callback = heartbeat_stale_trial_callback
        self.url = f"grpc://{host}:{port}"

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
        except Exception:  # noqa: BLE001 - proxy or database away, or trial finished: next beat
            pass

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        if self.grace_period is None:
            return []
        now = time.time()
        stale = []
        for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            beat = t.system_attrs.get(HEARTBEAT_ATTR)
            if beat is None and t.datetime_start is not None:
                beat = t.datetime_start.timestamp()
            if beat is not None and now - float(beat) > self.grace_period:
                stale.append(t._trial_id)  # FrozenTrial has no public trial id
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[..., Any] | None:
        return self.heartbeat_stale_trial_callback
