"""Worker processes: one process per worker, each with its own storage engine.

`join_study` is the body of `csearch worker` and of each `--workers N` process.
SIGINT/SIGTERM during an evaluation fail that trial cleanly, as interrupted (the study's
next worker re-queues it with the same parameters, so its work is redone by someone);
outside an evaluation the worker just stops after the current bookkeeping. Either way it
leaves nothing RUNNING or WAITING, and `csearch worker` exits 0.
A SIGKILLed worker's trial is failed and retried through the heartbeat.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from types import FrameType
from typing import Any

import optuna
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from . import attrs
from ._optuna import storage_of, study_id_of, trial_id_of
from .errors import CsearchError
from .placement import gpu_for, place_on_gpu, visible_gpus, wants_gpu
from .quiet import DEBUG_ENV, quiet_libraries
from .runner import Interrupted, TrialObjective, reap_stale, run_trials, worker_id
from .storage import (
    GRACE_PERIOD,
    HEARTBEAT_INTERVAL,
    WORKER_START_WAIT,
    count_trials,
    close_storages,
    open_storage,
    retry_while_restarting,
    set_trial_attrs,
)
from .study import Context, load_context, load_study, stored_spec

__all__ = ["join_study", "run_until_budget", "run_local_workers", "settle", "Interrupted"]


def _finish_interrupted(study: Study, reason: str) -> None:
    """Fail, as interrupted, the trial this worker was running and any trial it had just
    queued: nothing is left RUNNING or WAITING. The next worker of the study (another
    one, or `csearch run` resumed) re-queues each first, with the same params
    (`runner._enqueue_next`), and an interrupted trial takes no place in the budget."""
    me = worker_id()
    storage = storage_of(study)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        if t.user_attrs.get(attrs.WORKER) != me:
            continue
        why = reason if t.state == TrialState.RUNNING else f"{reason} before it started"
        set_trial_attrs(storage, trial_id_of(t), {attrs.FAIL_REASON: f"interrupted: {why}",
                                                 attrs.INTERRUPTED: True})
        try:
            storage.set_trial_state_values(trial_id_of(t), TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # finished meanwhile (another worker popped and ran it)


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
    def start() -> tuple[Study, Any]:
        study = load_study(open_storage(url, create=False), study_name)
        return study, stored_spec(study)

    study, spec = retry_while_restarting(start, WORKER_START_WAIT)
    if timeout is not None:
        spec = replace(spec, timeout=timeout)
    ctx = load_context(spec, device=device, stored=True, workload=workload)
    return run_until_budget(study, ctx, on_trial=on_trial, worker_index=worker_index)


def run_until_budget(
    study: Study,
    ctx: Context,
    *,
    on_trial: Callable[[Study, FrozenTrial], None] | None = None,
    worker_index: int | None = 0,
    raise_interrupt: bool = False,
) -> int:
    """`run_trials` with SIGINT/SIGTERM turned into a clean stop (see module doc).

    `raise_interrupt`: after that stop, raise `Interrupted` (naming the signal) instead of
    returning, so that `csearch run` can say so and exit 130."""
    objective = TrialObjective(ctx)
    received: list[str] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        received.append(name)
        objective.stopping = True  # no further trial (the runner starts one per optimize)
        try:
            study.stop()
        except RuntimeError:  # not inside optimize: stop before the next trial
            raise Interrupted(f"worker received {name}") from None
        if objective.evaluating:
            objective.interrupt = f"worker received {name}"
            raise Interrupted(objective.interrupt)

    def unraisable(info: Any) -> None:
        """An Interrupted that landed in a weakref callback is dropped there by Python
        (with a traceback on stderr); the trial's next stage raises it again."""
        if not isinstance(info.exc_value, Interrupted):
            previous_hook(info)

    # Signal handlers can only be set in the main thread (a Ray task may run elsewhere).
    main = threading.current_thread() is threading.main_thread()
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    for s in old:
        signal.signal(s, handler)
    previous_hook = sys.unraisablehook
    sys.unraisablehook = unraisable
    ran = 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            ran = run_trials(study, ctx, on_trial=on_trial, worker_index=worker_index,
                             objective=objective)
    except Interrupted:
        pass
    except KeyboardInterrupt:
        # Not a signal here: a Ray task cancelled by its driver (`ray.cancel` raises
        # KeyboardInterrupt in the task's thread, where no handler can be set). It stops
        # as a signal would: its trial is failed as interrupted.
        received.append("SIGINT")
    finally:
        sys.unraisablehook = previous_hook
        if received:
            for s in old:
                signal.signal(s, signal.SIG_IGN)
            try:
                _finish_interrupted(study, received[0])
            finally:
                for s, h in old.items():
                    signal.signal(s, h)
        else:
            for s, h in old.items():
                signal.signal(s, h)
    if received and raise_interrupt:
        raise Interrupted(received[0])
    return ran


def _child(study_name: str, url: str, index: int, device: str | None,
           workload: str | None = None, threads: int | None = None,
           gpu: str | None = None) -> None:
    if gpu is not None:  # first: nothing has initialised CUDA in this fresh process yet
        place_on_gpu(gpu)
    quiet_libraries(debug=os.environ.get(DEBUG_ENV) == "1")
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        join_study(study_name, url, device=device, worker_index=index, workload=workload)
    except CsearchError as e:
        raise SystemExit(f"worker {index}: {e}") from None
    except KeyboardInterrupt:
        pass
    finally:  # as `csearch` itself ends (cli.main): the parent waits for this exit
        close_storages()
        gc.freeze()


def run_local_workers(study_name: str, url: str, n: int, device: str | None = None,
                      workload: str | None = None,
                      gpus: list[str] | None = None) -> list[int]:
    """Start `n` spawned worker processes on this machine and wait for them.

    Returns their exit codes. Each process opens its own engine (never share one across
    fork) and builds its own workload. With device `auto` or `cuda` and GPUs visible
    (`gpus`, default `placement.visible_gpus()`), worker i sees only GPU i mod G.
    SIGINT/SIGTERM here are passed on to the workers; once they have stopped,
    `Interrupted` (naming the signal) is raised.
    """
    ctx = multiprocessing.get_context("spawn")
    # Each local worker gets its share of the cores: N workers each using every core
    # oversubscribe the CPU (benchmarks/RESULTS.md has the measurement).
    threads = max(1, (os.cpu_count() or 1) // n)
    if gpus is None:
        gpus = visible_gpus() if wants_gpu(device) else []
    procs = [ctx.Process(target=_child, args=(study_name, url, i, device, workload, threads,
                                              gpu_for(i, gpus)),
                         daemon=False)
             for i in range(n)]
    for p in procs:
        p.start()

    received: list[str] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        received.append(signal.Signals(signum).name)
        for p in procs:
            if p.is_alive() and p.pid:
                os.kill(p.pid, signum)

    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, forward)
    try:
        for p in procs:
            p.join()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if received:
        raise Interrupted(received[0])
    return [p.exitcode or 0 for p in procs]



def settle(study: Study, wait_s: float | None = None) -> int:
    """After every worker a command started has exited: fail the trials they left RUNNING.

    A worker killed near the end of a study leaves a trial that no live worker reaps (the
    others stopped at the budget before its heartbeat went stale). Such a trial is failed
    (and re-queued by the heartbeat callback) once stale, waiting up to the grace period
    and two beats. Returns how many trials are still RUNNING (a live worker elsewhere)."""
    if wait_s is None:
        wait_s = GRACE_PERIOD + 2 * HEARTBEAT_INTERVAL
    deadline = time.monotonic() + wait_s
    storage, study_id = storage_of(study), study_id_of(study)
    while True:
        running = count_trials(storage, study_id, (TrialState.RUNNING,))
        if not running or time.monotonic() >= deadline:
            return running
        reap_stale(study)
        time.sleep(0.5)
