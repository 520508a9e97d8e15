"""Running trials: the Optuna objective around `objectives.evaluate`, and the worker loop.

One worker = one process with its own storage engine and its own built workload; it runs
trials until the study's global budget of finished trials is reached. The loop survives
a database outage (results are spooled and written back, see `spool.py`) and reaps
stale trials before it returns, so no trial is left RUNNING by a finished worker.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import optuna
import sqlalchemy.exc
from optuna.trial import FrozenTrial, Trial, TrialState

from objectives import EarlyStopped, Reporter, evaluate, report_stage

from . import attrs
from ._optuna import note_attrs, storage_of, study_id_of, trial_id_of, upload_named_artifact
from .artifacts import TrialArtifactStore, new_artifact_id
from .attrs import TrialResult, store_results
from .budget import FINISHED, BudgetGate, count_finished, remaining_budget
from .errors import StorageError
from .placement import placed_gpu
from .spool import Spool
from .storage import budget_lock, error_chain, sampling_pass, set_trial_attrs
from .study import Context

__all__ = [
    "FINISHED",
    "TrialObjective",
    "count_finished",
    "remaining_budget",
    "run_trials",
    "reap_stale",
    "LEGACY_CONSTRAINTS_ATTR",
    "MEMORY_CONSTRAINT",
    "DB_ERRORS",
    "Interrupted",
]

try:  # a storage proxy that went away looks like a lost database (optional extra)
    from grpc import RpcError as _RpcError

    _PROXY_ERRORS: tuple[type[BaseException], ...] = (_RpcError,)
except ImportError:
    _PROXY_ERRORS = ()

LEGACY_CONSTRAINTS_ATTR = attrs.LEGACY_CONSTRAINTS
MEMORY_CONSTRAINT = "memory_budget"
# What a lost database connection looks like through Optuna and SQLAlchemy.
DB_ERRORS = (
    optuna.exceptions.StorageInternalError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.DBAPIError,
    ConnectionError,
    *_PROXY_ERRORS,
)


class Interrupted(KeyboardInterrupt):
    """Raised inside an evaluation when the worker receives SIGTERM or SIGINT."""


class _TrialReporter(Reporter):
    def __init__(self, trial: Trial, objective: TrialObjective):
        self.trial = trial
        self.objective = objective
        self._front: list[tuple[int, list[float]]] | None = None

    def stage(self, name: str) -> None:
        # A signal's Interrupted raised inside a weakref callback is dropped by Python;
        # the handler also leaves it here, so the next stage raises it for good.
        if self.objective.interrupt is not None:
            raise Interrupted(self.objective.interrupt)
        report_stage(f"trial {self.trial.number}: {name}")

    def attr(self, key: str, value: object) -> None:
        self.trial.set_user_attr(key, value)

    def front_objectives(self) -> tuple[str, ...] | None:
        return tuple(self.objective.ctx.spec.metric_names)

    def dominated(self, known: dict[str, float]) -> str | None:
        """The first feasible complete trial at least as good as `known` on every objective
        and better on one (the front read once per trial, at its first check)."""
        spec = self.objective.ctx.spec
        if self._front is None:
            from .results import is_feasible

            done = self.trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            self._front = [(t.number, t.values) for t in done
                           if t.values is not None and is_feasible(t) is not False]
        mine = [known[m] for m in spec.metric_names]
        for number, values in self._front:
            if _dominates(values, mine, spec.directions):
                shown = ", ".join(f"{m} {v:.4g}" for m, v in zip(spec.metric_names, values))
                return f"trial {number} ({shown})"
        return None


def _dominates(a: list[float], b: list[float], directions: list[str]) -> bool:
    """`a` is at least as good as `b` on every objective and better on one."""
    sign = [1.0 if d == "maximize" else -1.0 for d in directions]
    ge = all(s * x >= s * y for s, x, y in zip(sign, a, b))
    return ge and any(s * x > s * y for s, x, y in zip(sign, a, b))


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def trial_device(device: object) -> dict[str, str]:
    """Where a trial runs: the torch device, and the GPU the worker was placed on."""
    gpu = placed_gpu()
    return {attrs.DEVICE: str(device), **({attrs.GPU: gpu} if gpu is not None else {})}


@dataclass
class TrialObjective:
    """Optuna objective: sample a config, evaluate it, record metrics and feasibility."""

    ctx: Context
    spool: Spool | None = None
    evaluating: bool = field(default=False, init=False)  # read by signal handlers
    interrupt: str | None = field(default=None, init=False)  # set by signal handlers
    stopping: bool = field(default=False, init=False)  # a signal asked the study to stop
    gate: BudgetGate | None = field(default=None, init=False)  # held until the trial exists

    def __call__(self, trial: Trial) -> tuple[float, ...]:
        if self.gate is not None:
            self.gate.release()  # the trial exists: the next worker may count and create
        spec = self.ctx.spec
        seed = spec.seed + trial.number
        with sampling_pass(trial.storage, trial_id_of(trial)):  # one commit, not one per param
            config = self.ctx.space.sample(trial)
            _set_attrs(trial, {attrs.EVAL_SEED: seed, attrs.WORKER: worker_id(),
                               **trial_device(self.ctx.device)})
        self.evaluating = True
        try:
            try:
                ev = evaluate(
                    self.ctx.workload,
                    config,
                    budget_mb=self.ctx.budget_mb,
                    device=self.ctx.device,
                    seed=seed,
                    accuracy_guard=spec.accuracy_guard(),
                    reporter=_TrialReporter(trial, self),
                    serve_overhead_ms=self.ctx.serve_overhead_ms,
                )
            finally:  # before any handler below writes: a signal then only stops the study
                self.evaluating = False
        except EarlyStopped as e:
            _set_attrs(trial, {attrs.PRUNED_REASON: e.reason,
                               **({attrs.PARTIAL_METRICS: e.metrics} if e.metrics else {}),
                               **({attrs.EARLY_STOP: e.info} if e.info else {})})
            raise optuna.TrialPruned(e.reason) from None
        except DB_ERRORS:
            raise
        except KeyboardInterrupt as e:  # SIGINT/SIGTERM mid-evaluation (see workers.py)
            _set_attrs(trial, {attrs.FAIL_REASON: f"interrupted: {e}", attrs.INTERRUPTED: True})
            raise
        except Exception as e:
            trial.set_user_attr(attrs.FAIL_REASON, f"{type(e).__name__}: {e}"[:1000])
            raise
        values = [float(ev.metrics[m]) for m in spec.metric_names]
        constraints = {str(c): c.value(ev.metrics) for c in spec.parsed_constraints()}
        constraints[MEMORY_CONSTRAINT] = ev.memory_margin_mb
        extra = {attrs.REPLAY_SAMPLES: ev.samples} if ev.samples else {}
        if ev.serve_split is not None:
            extra[attrs.SERVE_SPLIT] = ev.serve_split
        result = TrialResult(values, ev.metrics, constraints, extra=extra)
        if self.spool is not None:  # before any database write: nothing evaluated is lost
            self.spool.add(trial, result)
        # One commit for the results and the artifact's record (upload_artifact writes a
        # system attr of the trial).
        with sampling_pass(trial.storage, trial_id_of(trial)):
            try:
                if spec.artifacts:
                    result = replace(result, artifact_id=self._upload(trial, ev.artifact))
            finally:  # the metrics are stored even if the upload fails
                store_results(trial.storage, trial, result)
        return tuple(values)

    def _upload(self, trial: Trial, data: bytes) -> str:
        """Upload the packed model while the trial is live; return the artifact id. The
        file goes to `DIR/<study>/trial-<n>/` (see `artifacts.py`)."""
        import io

        store_dir = self.ctx.spec.artifacts
        assert store_dir is not None
        store = TrialArtifactStore(store_dir, trial.study.study_name)
        return upload_named_artifact(
            store, trial.storage, trial_id_of(trial), new_artifact_id(trial.number),
            f"trial-{trial.number}-model.safetensors", io.BytesIO(data),
            "application/octet-stream")


def _set_attrs(trial: Trial, user: dict[str, object],
               system: dict[str, object] | None = None) -> None:
    """Store attrs of a live trial in one write, and keep `trial.user_attrs` in step."""
    system = system or {}
    set_trial_attrs(trial.storage, trial_id_of(trial), user, system)
    note_attrs(trial, user, system)


def reap_stale(study: optuna.Study) -> None:
    """Fail (and re-queue, via the heartbeat callback) trials whose worker died."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _seed_once(study: optuna.Study, ctx: Context) -> None:
    """Store the warm-start configurations when the study's first worker starts (not at
    `create`, which stores a study without trials), as the study's queue: `_enqueue_next`
    enqueues each just before it runs, so an interrupted run leaves none WAITING."""
    from .seeds import seed_entries

    from .sensitivity import sensitivity_seeds

    if study.user_attrs.get(attrs.SEEDED) or study.get_trials(deepcopy=False):
        return
    # At least one, at most a tenth of the budget; the sampler does the rest.
    limit = max(1, (ctx.spec.trials or 40) // 10)
    sens = sensitivity_seeds(ctx.space, study.user_attrs.get(attrs.SENSITIVITY))[:limit]
    queue = [{"params": p, "user_attrs": {attrs.SEEDED: "sensitivity"}} for p in sens]
    queue += seed_entries(ctx.space, limit - len(queue))
    study.set_user_attr(attrs.QUEUED, queue)
    study.set_user_attr(attrs.SEEDED, True)


def _enqueue_next(study: optuna.Study) -> None:
    """Enqueue the next trial csearch owes the study, unless one is WAITING already: first
    a retry of a trial a signal failed (same params, `retry_of`), then the next unused
    entry of the study's queue. Called just before a trial starts (under the budget gate),
    so a queued trial is WAITING only for that moment. The trial is marked with this
    worker, so an interrupt in that moment fails it (see `workers._finish_interrupted`)."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials):
        return
    mine = {attrs.WORKER: worker_id()}
    retried = {t.user_attrs.get(attrs.RETRY_OF) for t in trials}
    for t in trials:
        if (t.state == TrialState.FAIL and t.user_attrs.get(attrs.INTERRUPTED)
                and t.number not in retried):
            kept = {k: t.user_attrs[k] for k in (attrs.SEEDED, attrs.QUEUED)
                    if k in t.user_attrs}
            study.enqueue_trial(t.params, user_attrs={**kept, **mine, attrs.RETRY_OF: t.number},
                                skip_if_exists=False)
            return
    used = {t.user_attrs.get(attrs.QUEUED) for t in trials}
    for i, entry in enumerate(study.user_attrs.get(attrs.QUEUED) or []):
        if i not in used:
            study.enqueue_trial(entry["params"], skip_if_exists=False,
                                user_attrs={**entry["user_attrs"], **mine, attrs.QUEUED: i})
            return


def _is_db_error(e: BaseException | None) -> bool:
    """A database error, or an error raised while handling one (Optuna's tell path can
    turn a lost connection into an UnboundLocalError)."""
    return any(isinstance(x, DB_ERRORS) for x in error_chain(e))


def _finished_elsewhere(e: BaseException) -> bool:
    """Our trial was failed as stale by another worker while we evaluated it (after a
    database outage); its result is in the spool and is kept as a recovered trial."""
    return isinstance(e, (ValueError, optuna.exceptions.UpdateFinishedTrialError)) and (
        "Cannot tell a FAIL trial" in str(e) or "already finished" in str(e)
    )


def _wait_for_database(study: optuna.Study, deadline: float) -> None:
    delay = 1.0
    while True:
        try:
            storage_of(study).get_all_studies()
            return
        except DB_ERRORS as e:
            if time.monotonic() + delay > deadline:
                raise StorageError(
                    f"the database stayed unreachable; gave up ({type(e).__name__}). "
                    "Evaluated results are kept in the local spool and written by the next "
                    "worker of this study on this machine"
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 15.0)


def run_trials(
    study: optuna.Study,
    ctx: Context,
    *,
    on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    worker_index: int | None = 0,
    objective: TrialObjective | None = None,
    outage_seconds: float | None = None,
) -> int:
    """Run this process's share of the study's budget; return how many trials it ran.

    Workers of one study need different sampler seeds, or their random start-up trials
    would repeat each other: worker i uses seed + i (a worker of unknown index, one
    started by hand, derives its offset from its process id).
    """
    from .samplers import make_sampler
    from .storage import redact

    from .sensitivity import narrow

    spec = ctx.spec
    url = getattr(storage_of(study), "url", "") or ""
    spool = Spool(study.study_name, redact(str(url)))
    objective = objective or TrialObjective(ctx)
    objective.spool = spool
    offset = worker_index if worker_index is not None else 1 + os.getpid() % 9973
    study.sampler = make_sampler(spec.sampler, spec.seed + offset, ctx.space)
    if outage_seconds is None:
        outage_seconds = float(os.environ.get("CSEARCH_DB_OUTAGE_SECONDS", "300"))
    ran = 0
    start = time.monotonic()

    def count(st: optuna.Study, ft: FrozenTrial) -> None:
        nonlocal ran
        ran += 1
        spool.done(trial_id_of(ft))
        if on_trial is not None:
            on_trial(st, ft)

    callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] = [count]
    try:
        while True:  # start-up reads and writes, retried if the database is restarting
            try:
                # Groups the sensitivity pass found too fragile stay fp32 for every worker.
                ctx.space = narrow(ctx.space, study.user_attrs.get(attrs.SENSITIVITY))
                spool.flush(study)
                _seed_once(study, ctx)
                break
            except Exception as e:
                if not _is_db_error(e):
                    raise
                _wait_for_database(study, time.monotonic() + outage_seconds)
        gate = BudgetGate(study, spec.trials) if spec.trials is not None else None
        objective.gate = gate
        # One trial per `optimize` call (with a budget, each admitted by the budget gate,
        # exact across workers), each preceded by the trial csearch queues for it.
        while not objective.stopping:
            try:
                timeout = None
                if spec.timeout is not None:
                    timeout = spec.timeout - (time.monotonic() - start)
                    if timeout <= 0:
                        break
                if gate is not None and not gate.open():
                    break
                try:
                    if gate is not None:  # its lock is held until the trial exists
                        _enqueue_next(study)
                    else:
                        with budget_lock(storage_of(study), study_id_of(study)):
                            _enqueue_next(study)
                    study.optimize(objective, n_trials=1, timeout=timeout,
                                   catch=(Exception,), callbacks=callbacks)
                finally:
                    if gate is not None:
                        gate.release()
            except Exception as e:
                if not (_is_db_error(e) or _finished_elsewhere(e)):
                    raise
                # The database went away mid-trial: wait for it, write what was spooled,
                # and go on with the rest of the budget.
                _wait_for_database(study, time.monotonic() + outage_seconds)
                spool.flush(study)
        reap_stale(study)
    except DB_ERRORS as e:
        raise StorageError(f"lost the database connection: {type(e).__name__}") from None
    return ran
