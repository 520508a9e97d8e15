"""The study's trial budget, shared by every worker: exact, not "at least".

Optuna's `MaxTrialsCallback` (and csearch's COUNT of finished trials) stops a worker once
the budget is reached, but by then the other workers may each have started one more
trial: N workers overshoot by up to N - 1. A `BudgetGate` makes "count the trials, then
create the next one" one step across workers: it takes the study's database lock
(`storage.budget_lock`), counts finished and running trials, and keeps the lock until the
new trial exists (the objective's first line calls `release`). Each trial is its own
`optimize` call, admitted by the gate, so no end-of-trial budget callback is needed.
"""

from __future__ import annotations

from contextlib import ExitStack

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from . import attrs
from ._optuna import storage_of, study_id_of
from .storage import budget_lock, count_trials

__all__ = ["FINISHED", "BudgetGate", "count_finished", "remaining_budget"]

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
_TAKEN = (*FINISHED, TrialState.RUNNING)  # a running trial holds its place in the budget


def _interrupted(storage: BaseStorage, study_id: int) -> int:
    """FAIL trials a signal stopped: each is re-run as a new trial, which takes its place
    in the budget (only FAIL trials are read, and they are few)."""
    return sum(1 for t in storage.get_all_trials(study_id, deepcopy=False,
                                                 states=(TrialState.FAIL,))
               if t.user_attrs.get(attrs.INTERRUPTED))


def count_finished(study: optuna.Study) -> int:
    """Finished trials, less the interrupted ones (see `_interrupted`)."""
    storage, study_id = storage_of(study), study_id_of(study)
    return count_trials(storage, study_id, FINISHED) - _interrupted(storage, study_id)


def remaining_budget(study: optuna.Study, trials: int | None) -> int | None:
    if trials is None:
        return None
    return max(0, trials - count_finished(study))


class BudgetGate:
    """Admit one trial at a time while the budget lasts (see the module doc)."""

    def __init__(self, study: optuna.Study, trials: int) -> None:
        self.study = study
        self.trials = trials
        self._held: ExitStack | None = None

    def open(self) -> bool:
        """Take the lock and check the budget. True: the caller may create one trial and
        must then `release`. False: the budget is spent (the lock is not held)."""
        self.release()
        stack = ExitStack()
        storage, study_id = storage_of(self.study), study_id_of(self.study)
        stack.enter_context(budget_lock(storage, study_id))
        try:
            taken = count_trials(storage, study_id, _TAKEN) - _interrupted(storage, study_id)
        except BaseException:
            stack.close()
            raise
        if taken >= self.trials:
            stack.close()
            return False
        self._held = stack
        return True

    def release(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.close()
