"""Running trials: the Optuna objective around `objectives.evaluate`, and worker loops.

One worker = one process with its own storage engine and its own built workload; it runs
trials until the study's global budget of finished trials is reached.
"""

from __future__ import annotations

import os
import socket
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, Trial, TrialState

from objectives import EarlyStopped, Reporter, evaluate

from .study import Context

__all__ = [
    "FINISHED",
    "TrialObjective",
    "count_finished",
    "remaining_budget",
    "run_trials",
    "LEGACY_CONSTRAINTS_ATTR",
    "MEMORY_CONSTRAINT",
]

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
# optuna-dashboard 0.21 reads feasibility only from this list-valued system attr.
LEGACY_CONSTRAINTS_ATTR = "constraints"
MEMORY_CONSTRAINT = "memory_budget"


class _TrialReporter(Reporter):
    def __init__(self, trial: Trial):
        self.trial = trial

    def attr(self, key: str, value: object) -> None:
        self.trial.set_user_attr(key, value)


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class TrialObjective:
    """Optuna objective: sample a config, evaluate it, record metrics and feasibility."""

    ctx: Context

    def __call__(self, trial: Trial) -> tuple[float, ...]:
        spec = self.ctx.spec
        config = self.ctx.space.sample(trial)
        seed = spec.seed + trial.number
        trial.set_user_attr("eval_seed", seed)
        trial.set_user_attr("worker", _worker_id())
        try:
            ev = evaluate(
                self.ctx.workload,
                config,
                budget_mb=self.ctx.budget_mb,
                device=self.ctx.device,
                seed=seed,
                accuracy_guard=spec.accuracy_guard(),
                reporter=_TrialReporter(trial),
            )
        except EarlyStopped as e:
            trial.set_user_attr("pruned_reason", e.reason)
            if e.metrics:
                trial.set_user_attr("partial_metrics", e.metrics)
            raise optuna.TrialPruned(e.reason) from None
        except Exception as e:
            trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}"[:1000])
            raise
        trial.set_user_attr("metrics", ev.metrics)
        values = []
        for name, c in [(str(c), c) for c in spec.parsed_constraints()]:
            values.append(c.value(ev.metrics))
            trial.set_constraint(name, values[-1])
        values.append(ev.memory_margin_mb)
        trial.set_constraint(MEMORY_CONSTRAINT, ev.memory_margin_mb)
        trial.storage.set_trial_system_attr(trial._trial_id, LEGACY_CONSTRAINTS_ATTR, values)
        if spec.artifacts:
            self._upload(trial, ev.artifact)
        return tuple(ev.metrics[m] for m in spec.metric_names)

    def _upload(self, trial: Trial, data: bytes) -> None:
        store_dir = self.ctx.spec.artifacts
        assert store_dir is not None
        os.makedirs(store_dir, exist_ok=True)
        store = FileSystemArtifactStore(store_dir)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, f"trial-{trial.number}-model.safetensors")
            with open(path, "wb") as f:
                f.write(data)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                artifact_id = upload_artifact(
                    artifact_store=store,
                    file_path=path,
                    study_or_trial=trial,
                    mimetype="application/octet-stream",
                )
        trial.set_user_attr("artifact_id", artifact_id)


def count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def remaining_budget(study: optuna.Study, trials: int | None) -> int | None:
    if trials is None:
        return None
    return max(0, trials - count_finished(study))


def run_trials(
    study: optuna.Study,
    ctx: Context,
    *,
    on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    worker_index: int | None = 0,
) -> int:
    """Run this process's share of the study's budget; return how many trials it ran.

    Workers of one study need different sampler seeds, or their random start-up trials
    would repeat each other: worker i uses seed + i (a worker of unknown index, one
    started by hand, derives its offset from its process id).
    """
    spec = ctx.spec
    remaining = remaining_budget(study, spec.trials)
    if remaining == 0:
        return 0
    from .samplers import make_sampler

    offset = worker_index if worker_index is not None else 1 + os.getpid() % 9973
    study.sampler = make_sampler(spec.sampler, spec.seed + offset, ctx.space)
    ran = 0

    def count(st: optuna.Study, ft: FrozenTrial) -> None:
        nonlocal ran
        ran += 1
        if on_trial is not None:
            on_trial(st, ft)

    callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] = [count]
    if spec.trials is not None:
        callbacks.append(MaxTrialsCallback(spec.trials, states=FINISHED))
    study.optimize(
        TrialObjective(ctx),
        n_trials=remaining,
        timeout=spec.timeout,
        catch=(Exception,),
        callbacks=callbacks,
    )
    return ran
