"""Windowed TPE: Optuna's TPESampler on a bounded history, built on TPE's internals.

Subclassing TPESampler means overriding its private `_sample_relative` and `_sample` and
calling its private split and Parzen-estimator helpers; tests/unit/test_samplers.py checks
the suggestions equal TPESampler's up to the window for the same seed.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.samplers import TPESampler
from optuna.samplers._tpe.sampler import (  # TPE's own gamma and below/above split
    _split_trials,
    default_gamma,
    default_gamma_multiobjective,
)
from optuna.search_space.group_decomposed import (  # the group decomposition TPE uses
    _GroupDecomposedSearchSpace,
    _SearchSpaceGroup,
)
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from .multi_objective import non_domination_rank

__all__ = ["TPE_BEST", "TPE_WINDOW", "WindowedTPESampler"]

# The most recent COMPLETE/PRUNED trials TPE models. Up to this many the sampler is
# Optuna's TPESampler exactly; past it a suggest's cost stops growing with the study.
TPE_WINDOW = 300
# The best feasible trials so far that TPE models besides (its "good" set at 1,000
# trials). Not the whole front: a continuous 3-objective front grows into the hundreds,
# and TPE's hypervolume subset selection on it then dominated a suggest.
TPE_BEST = 100

_MODELLED = (TrialState.COMPLETE, TrialState.PRUNED)
_OPEN = (TrialState.RUNNING, TrialState.WAITING)  # states a trial can still leave


def _infeasible(trial: FrozenTrial) -> bool:
    """TPE's own rule (`_get_infeasible_trial_score > 0`): a positive constraint value,
    from `trial.set_constraint` or the legacy `constraints` list, makes a trial infeasible."""
    return any(v > 0 for v in trial.constraints.values())


class _Arrivals:
    """Which trials became COMPLETE or PRUNED since the last look, in number order, without
    a Python loop over the whole study: in a study's full trial list trial k is at index k,
    so only the trials created since, and those then RUNNING or WAITING, need a look."""

    def __init__(self) -> None:
        self._owner: tuple[object, int] | None = None  # (storage, study id) looked at
        self._upto = 0  # trials numbered below this were looked at
        self._open: set[int] = set()  # of those, the ones then RUNNING or WAITING

    @property
    def open(self) -> set[int]:
        """Numbers of the trials RUNNING or WAITING at the last look."""
        return self._open

    def take(self, study: Study, trials: list[FrozenTrial]) -> tuple[list[FrozenTrial], bool]:
        """The newly finished trials of `trials` (all states, number order), and whether the
        study changed (in-memory studies all have id 0, so the storage is compared too), in
        which case every finished trial is new and what was built on the old one is stale."""
        owner, reset = self._owner, False
        if owner is None or owner[0] is not study._storage or owner[1] != study._study_id:
            self._owner, self._upto, self._open = (study._storage, study._study_id), 0, set()
            reset = True
        at = _numbered(trials)
        new = []
        for k in sorted(self._open):
            t = at(k)
            if t is not None and t.state not in _OPEN:
                self._open.discard(k)
                if t.state in _MODELLED:
                    new.append(t)
        last = trials[-1].number if trials else -1
        for k in range(self._upto, last + 1):
            t = at(k)
            if t is None or t.state in _OPEN:
                self._open.add(k)
            elif t.state in _MODELLED:
                new.append(t)
        self._upto = max(self._upto, last + 1)
        new.sort(key=lambda t: t.number)
        return new, reset


def _crowding(loss: np.ndarray) -> np.ndarray:
    """NSGA-II's crowding distance of each row of `loss` (how alone a point is among the
    others; every objective's extremes are infinitely alone). Infinite values are clipped
    just past the finite ones, so they sort last and count once."""
    dist = np.zeros(len(loss))
    for col in loss.T:
        finite = np.isfinite(col)
        if not finite.any():
            continue
        lo, hi = col[finite].min(), col[finite].max()
        col = np.clip(col, lo - 1.0, hi + 1.0)
        order = np.argsort(col, kind="stable")
        ranked = col[order]
        dist[order[[0, -1]]] = np.inf
        if ranked[-1] > ranked[0]:
            dist[order[1:-1]] += (ranked[2:] - ranked[:-2]) / (ranked[-1] - ranked[0])
    return dist


def _best(trials: list[FrozenTrial], directions: list[StudyDirection],
          k: int) -> list[FrozenTrial]:
    """The `k` best of `trials` by non-domination rank, in number order; of the rank that
    does not fit whole, its most spread trials (crowding distance). A cheap, deterministic
    stand-in for the ranking plus hypervolume subset selection of TPE's own split."""
    if len(trials) <= k:
        return sorted(trials, key=lambda t: t.number)
    signs = [-1.0 if d == StudyDirection.MAXIMIZE else 1.0 for d in directions]
    loss = np.array([t.values for t in trials], dtype=float) * signs
    ranks = non_domination_rank(loss, n_below=k)
    keep: list[int] = []
    for rank in np.unique(ranks):
        at = np.flatnonzero(ranks == rank)
        if len(keep) + len(at) > k:
            spread = np.argsort(-_crowding(loss[at]), kind="stable")[:k - len(keep)]
            keep.extend(at[spread].tolist())
            break
        keep.extend(at.tolist())
    return sorted((trials[i] for i in keep), key=lambda t: t.number)


def _numbered(trials: list[FrozenTrial]) -> Callable[[int], FrozenTrial | None]:
    """Trial number -> trial. Optuna numbers a study's trials 0, 1, 2, ... and lists them in
    that order, so the list index is the number; a list that is not so is indexed by dict."""
    if not trials or (trials[0].number == 0 and trials[-1].number == len(trials) - 1):
        return lambda k: trials[k] if 0 <= k < len(trials) else None
    return {t.number: t for t in trials}.get


class _IncrementalGroupSpace(_GroupDecomposedSearchSpace):
    """Optuna's group decomposition folds every finished trial's distributions into the
    partition on every suggest (O(trials x groups)). Folding in a trial already folded in
    changes nothing, not even the order of the groups, so folding only the newly finished
    trials, in number order, gives the same partition at a cost that does not grow."""

    def __init__(self, include_pruned: bool = False) -> None:
        super().__init__(include_pruned)
        self._arrivals = _Arrivals()

    def calculate(self, study: Study, use_cache: bool = False) -> _SearchSpaceGroup:
        if self._study_id is None:
            self._study_id = study._study_id
        elif self._study_id != study._study_id:
            raise ValueError("`_GroupDecomposedSearchSpace` cannot handle multiple studies.")
        new, _ = self._arrivals.take(study, study._get_trials(deepcopy=False, use_cache=use_cache))
        for trial in new:
            if self._include_pruned or trial.state == TrialState.COMPLETE:
                self._search_space.add_distributions(trial.distributions)
        return copy.deepcopy(self._search_space)


class WindowedTPESampler(TPESampler):
    """Optuna's TPESampler on a bounded history, for studies of thousands of trials.

    Multi-objective TPE re-reads, re-ranks (non-dominated sort) and re-fits Parzen
    estimators on every finished trial, once per parameter group, so a suggest's cost
    grows with the study until it rivals a cheap trial (benchmarks/RESULTS.md). Once
    more than `window` trials are COMPLETE or PRUNED, TPE is given instead: the `best`
    best feasible trials so far (by non-domination rank, kept incrementally), the
    `window` most recent COMPLETE/PRUNED trials, and every RUNNING trial (the constant
    liar). Its "good" set is as large as on
    the whole study (10 %), up to `best`; the recent trials stand in for the rest, which
    TPE weighs down by age anyway. Infeasible trials stay infeasible (TPE reads
    `trial.constraints` from the same FrozenTrials). The history is read and the split
    computed once per suggest instead of once per group, and the group decomposition
    folds in newly finished trials only; both give identical results.

    Up to `window` modelled trials the suggestions are exactly TPESampler's for the same
    seed (tests/unit/test_samplers.py), so short studies search as before.
    """

    def __init__(self, *, window: int = TPE_WINDOW, best: int = TPE_BEST,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if window < 1 or best < 1:
            raise ValueError(f"window and best must be positive, got {window}, {best}")
        self._window, self._best_cap = window, best
        if self._group_decomposed_search_space is not None:
            self._group_decomposed_search_space = _IncrementalGroupSpace(True)
        self._arrivals = _Arrivals()
        self._n_modelled = 0  # COMPLETE or PRUNED trials in the study
        self._elite: list[FrozenTrial] = []  # the `best` best feasible trials so far
        self._unfolded: list[FrozenTrial] = []  # feasible COMPLETE trials not weighed yet
        # While one trial's groups are sampled: the trials TPE models and their split.
        # Threads (`optimize(n_jobs=...)`) take turns: this state is the sampler's.
        self._lock = threading.RLock()
        self._history: list[FrozenTrial] | None = None
        self._split: tuple[list[FrozenTrial], list[FrozenTrial]] | None = None

    def _best_so_far(self, study: Study) -> list[FrozenTrial]:
        """The `best` best feasible COMPLETE trials so far (`_best`), new ones weighed in
        against the kept ones only: one that was cut does not come back."""
        if self._unfolded:
            pool = self._elite + self._unfolded
            self._elite = _best(pool, study.directions, self._best_cap)
            self._unfolded = []
        return self._elite

    def _read_history(self, study: Study, trial: FrozenTrial) -> list[FrozenTrial]:
        """The trials `TPESampler._sample` reads (COMPLETE, PRUNED, RUNNING but this one,
        number order), cut once more than `window` are COMPLETE or PRUNED to the best
        feasible ones so far, the last `window` of those, and the RUNNING ones."""
        liar = self._constant_liar
        trials = study._get_trials(deepcopy=False, use_cache=not liar)
        new, reset = self._arrivals.take(study, trials)
        if reset:
            self._n_modelled, self._elite, self._unfolded = 0, [], []
        self._n_modelled += len(new)
        self._unfolded += [t for t in new if t.state == TrialState.COMPLETE and not _infeasible(t)]
        states = (*_MODELLED, TrialState.RUNNING) if liar else _MODELLED
        if self._n_modelled <= self._window:
            return [t for t in trials if t.state in states and t.number != trial.number]
        at = _numbered(trials)
        running = [t for t in map(at, self._arrivals.open) if t is not None
                   and t.state == TrialState.RUNNING and t.number != trial.number] if liar else []
        recent: list[FrozenTrial] = []
        for t in reversed(trials):
            if len(recent) == self._window:
                break
            if t.state in _MODELLED:
                recent.append(t)
        kept = {t.number: t for t in (*self._best_so_far(study), *recent, *running)}
        return [kept[k] for k in sorted(kept)]

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        """TPESampler's, but the history is read, windowed and split once for all groups
        (Optuna does each once per group, which is O(trials) each)."""
        with self._lock:
            self._history, self._split = self._read_history(study, trial), None
            try:
                return super().sample_relative(study, trial, search_space)
            finally:
                self._history, self._split = None, None

    def _sample_relative(self, study: Study, trial: FrozenTrial,
                         search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if search_space == {}:
            return {}
        if self._n_modelled < self._n_startup_trials:  # random sampling until then
            return {}
        return self._sample(study, trial, search_space)

    def _sample(self, study: Study, trial: FrozenTrial,
                search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        """`TPESampler._sample` on the window; in `sample_relative` on the history and
        split computed once for the trial, else (`sample_independent`) read afresh."""
        with self._lock:
            return self._sample_locked(study, trial, search_space)

    def _sample_locked(self, study: Study, trial: FrozenTrial,
                       search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        relative = self._history is not None
        trials = self._history if self._history is not None else self._read_history(study, trial)
        if self._gamma is None:
            multi = len(study.directions) > 1
            self._gamma = default_gamma_multiobjective if multi else default_gamma
        split = self._split if relative else None
        if split is None:
            n = sum(t.state != TrialState.RUNNING for t in trials)
            n_below = self._gamma(n)
            if self._n_modelled > self._window:  # as many as of the whole study, to `best`
                n_below = min(self._gamma(self._n_modelled), self._best_cap)
            split = _split_trials(study, trials, n_below)
            if relative:
                self._split = split
        below, above = split
        mpe_below = self._build_parzen_estimator(study, search_space, below, handle_below=True)
        mpe_above = self._build_parzen_estimator(study, search_space, above, handle_below=False)
        samples = mpe_below.sample(self._rng.rng, self._n_ei_candidates)
        acq = self._compute_acquisition_func(samples, mpe_below, mpe_above)
        ret = TPESampler._compare(samples, acq)
        for name, dist in search_space.items():
            ret[name] = dist.to_external_repr(ret[name])
        return ret
