"""`RefineSampler`: a share of the trials refines the feasible front, the rest go to a
base sampler (the package doc says how)."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from spaces import Space

from .. import attrs
from .._optuna import storage_of, trial_id_of
from .._optuna.tpe import _numbered
from .front import PLAN_ATTR, History, enqueued, least_violating, tournament
from .steps import directed, fits, mutate, param_key, pattern_move, repair

__all__ = ["REFINE_SHARE", "ADAPTIVE_BOUNDS", "PATTERN_P", "DIRECTED_P", "REPAIR_P",
           "RefineSampler"]

REFINE_SHARE = 0.5  # share of the sampler's trials that refine the front
ADAPTIVE_BOUNDS = (0.25, 0.75)  # an adaptive share stays within these
PATTERN_P = 0.5  # a parent that was itself a refinement: chance its step is repeated
DIRECTED_P = 0.7  # otherwise: chance of a directed step towards a smaller model
REPAIR_P = 0.25  # chance a refinement gives a near miss more recovery instead
_OPEN = (TrialState.RUNNING, TrialState.WAITING)


class RefineSampler(BaseSampler):
    """`share` of the trials refine the feasible front (see the module doc); the rest,
    enqueued trials and any trial with no feasible front yet go to `base`."""

    def __init__(self, base: BaseSampler, space: Space, *, share: float = REFINE_SHARE,
                 adaptive: bool = False, seed: int | None = None, tries: int = 20) -> None:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share must be in [0, 1], got {share}")
        self._base, self._space, self._share, self._tries = base, space, share, tries
        self._adaptive = adaptive
        self._rng = np.random.RandomState(seed)
        self._plans: dict[int, dict[str, Any]] = {}  # trial id -> planned params
        self._lock = threading.Lock()
        self._history = History()

    def reseed_rng(self) -> None:
        self._base.reseed_rng()
        self._rng = np.random.RandomState()

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial
                                    ) -> dict[str, BaseDistribution]:
        return self._base.infer_relative_search_space(study, trial)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._base.before_trial(study, trial)
        if enqueued(trial):
            return
        with self._lock:
            trials = study.get_trials(deepcopy=False)
            h = self._history
            h.update((id(storage_of(study)), study.study_name), study.directions, trials)
            front = h.front
            if not front or self._rng.rand() >= self._share_now(h.counts, front):
                return
            plan = self._plan(study, trial, trials, front)
            if plan is not None:
                self._plans[trial_id_of(trial)] = plan

    def _share_now(self, counts: np.ndarray, front: list[FrozenTrial]) -> float:
        """`share`, or if adaptive, the share that follows which of the two kinds of trial
        lands on the feasible front more often (each rate counted from one success in two
        trials, so neither starts at zero), within ADAPTIVE_BOUNDS: the search spends more
        where it pays, and never stops exploring or refining."""
        if not self._adaptive:
            return self._share
        wins = np.ones(2)  # front members: refine, base
        for t in front:
            if not enqueued(t):
                wins[int(not t.system_attrs.get(PLAN_ATTR))] += 1
        rate = wins / counts
        lo, hi = ADAPTIVE_BOUNDS
        return float(min(hi, max(lo, rate[0] / rate.sum())))

    def _plan(self, study: Study, trial: FrozenTrial, trials: list[FrozenTrial],
              front: list[FrozenTrial]) -> dict[str, Any] | None:
        """A child of a front member that no other trial has or plans; stored on `trial`."""
        taken = set(self._history.keys)
        taken.update(param_key(p) for t in trials if t.state in _OPEN
                     and t.number != trial.number for p in _configs(t))
        at = _numbered(trials)
        shares = _shares(study)
        misses = self._history.near_misses(study.directions)
        for _ in range(3):  # a plan another worker stored at the same time: plan again
            child, parent = None, None
            for _ in range(self._tries):
                if misses and self._rng.rand() < REPAIR_P:
                    parent = least_violating(misses, self._rng)
                    cand = repair(self._space, parent, self._rng)
                    if cand is not None and param_key(cand) not in taken:
                        child = cand
                        break
                parent = tournament(front, study.directions, self._rng)
                cand = None
                grand = (parent.system_attrs.get(PLAN_ATTR) or {}).get("parent")
                g = at(grand) if grand is not None else None
                if g is not None and self._rng.rand() < PATTERN_P:
                    cand = pattern_move(self._space, parent, g.params, self._rng)
                if cand is None and self._rng.rand() < DIRECTED_P:
                    cand = directed(self._space, parent, self._rng, shares)
                if cand is None:
                    cand = mutate(self._space, parent, self._rng, groups=shares)
                if param_key(cand) not in taken:
                    child = cand
                    break
            if child is None or parent is None:
                return None
            storage_of(study).set_trial_system_attr(
                trial_id_of(trial), PLAN_ATTR, {"parent": parent.number, "params": child})
            key = param_key(child)
            rivals = study.get_trials(deepcopy=False, states=_OPEN)
            if not any(t.number < trial.number and key in map(param_key, _configs(t))
                       for t in rivals):
                return child
            taken.add(key)
        storage_of(study).set_trial_system_attr(trial_id_of(trial), PLAN_ATTR, None)
        return None

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        plan = self._plans.get(trial_id_of(trial))
        if plan is None:
            return self._base.sample_relative(study, trial, search_space)
        return {n: plan[n] for n, d in search_space.items() if n in plan and fits(d, plan[n])}

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        plan = self._plans.get(trial_id_of(trial))
        if plan is not None and param_name in plan and fits(param_distribution,
                                                            plan[param_name]):
            return plan[param_name]
        return self._base.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState,
                    values: Any) -> None:
        self._plans.pop(trial_id_of(trial), None)
        self._base.after_trial(study, trial, state, values)



def _shares(study: Study) -> dict[str, float]:
    """Each layer group's share of the model's weights, from the study's sensitivity
    pass (empty when it has none)."""
    sens = study.user_attrs.get(attrs.SENSITIVITY) or {}
    weights = sens.get("weights") or {}
    total = sum(weights.values())
    return {g: w / total for g, w in weights.items()} if total else {}



def _configs(t: FrozenTrial) -> list[dict[str, Any]]:
    """The parameter sets a trial holds: its params, and for an open trial its plan."""
    out = [t.params] if t.params else []
    if t.state in _OPEN:
        plan = t.system_attrs.get(PLAN_ATTR)
        if plan:
            out.append(plan["params"])
    return out
