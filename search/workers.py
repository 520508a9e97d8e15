"""Worker processes: one process per worker, each with its own storage engine.

`join_study` is the body of `csearch worker` and of each `--workers N` process. SIGINT and
SIGTERM fail the trial in flight cleanly (it is re-queued with the same parameters) and
the worker exits; a SIGKILLed worker's trial is failed and retried by the heartbeat.
"""

from __future__ import annotations

import multiprocessing
import signal
import warnings
from collections.abc import Callable
from types import FrameType

import optuna
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from .errors import CsearchError
from .runner import run_trials
from .storage import open_storage
from .study import load_context, load_study, stored_spec

__all__ = ["join_study", "run_local_workers", "Interrupted"]


class Interrupted(KeyboardInterrupt):
    """Raised inside a trial when the worker receives SIGTERM or SIGINT."""


def _raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(f"worker received {signal.Signals(signum).name}")


def _requeue_interrupted(study: Study) -> None:
    """Re-queue trials this worker failed by interruption, so their work is redone."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if t.user_attrs.get("interrupted") and not t.user_attrs.get("requeued"):
            study._storage.set_trial_user_attr(t._trial_id, "requeued", True)
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number},
                                skip_if_exists=False)


def join_study(
    study_name: str,
    url: str,
    *,
    device: str | None = None,
    worker_index: int | None = None,
    timeout: float | None = None,
    on_trial: Callable[[Study, FrozenTrial], None] | None = None,
    workload: str | None = None,
) -> int:
    """Run trials of an existing study from its stored spec; return how many ran.

    `workload` is the plugin reference the operator named; a stored plugin reference is
    not imported without it (built-in names and entry points need nothing)."""
    storage = open_storage(url, create=False)
    study = load_study(storage, study_name)
    spec = stored_spec(study)
    if timeout is not None:
        from dataclasses import replace

        spec = replace(spec, timeout=timeout)
    ctx = load_context(spec, device=device, stored=True, workload=workload)
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, _raise_interrupt)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return run_trials(study, ctx, on_trial=on_trial, worker_index=worker_index)
    except Interrupted as e:
        _mark_interrupted(study, str(e))
        return 0
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _mark_interrupted(study: Study, reason: str) -> None:
    import os

    me = f":{os.getpid()}"
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        worker = t.user_attrs.get("worker", "")
        if worker.endswith(me) and "interrupted" not in t.user_attrs:
            study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            study._storage.set_trial_user_attr(t._trial_id, "fail_reason", f"interrupted: {reason}")
    _requeue_interrupted(study)


def _child(study_name: str, url: str, index: int, device: str | None,
           workload: str | None = None) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore")
    try:
        join_study(study_name, url, device=device, worker_index=index, workload=workload)
    except CsearchError as e:
        raise SystemExit(f"worker {index}: {e}") from None
    except KeyboardInterrupt:
        pass


def run_local_workers(study_name: str, url: str, n: int, device: str | None = None,
                      workload: str | None = None) -> list[int]:
    """Start `n` spawned worker processes on this machine and wait for them.

    Returns their exit codes. Each process opens its own engine (never share one across
    fork) and builds its own workload.
    """
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_child, args=(study_name, url, i, device, workload),
                         daemon=False)
             for i in range(n)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        for p in procs:
            p.join()
    return [p.exitcode or 0 for p in procs]
