"""The feasible front, the near misses, and what a sampler has folded in of a study."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import numpy as np
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from .. import attrs
from .._optuna import is_enqueued, is_pareto_front
from .._optuna.tpe import _crowding
from .steps import param_key

__all__ = ["PLAN_ATTR", "RECOVERABLE", "History", "feasible_front", "tournament",
           "least_violating", "enqueued"]

PLAN_ATTR = "csearch:refine"  # system attr: {"parent": number, "params": planned params}


def _losses(trials: list[FrozenTrial], directions: list[StudyDirection]) -> np.ndarray:
    """The trials' values in minimisation form, one row each."""
    signs = np.array([-1.0 if d == StudyDirection.MAXIMIZE else 1.0 for d in directions])
    return np.array([t.values for t in trials], dtype=float) * signs


def feasible_front(trials: Iterable[FrozenTrial],
                   directions: list[StudyDirection]) -> list[FrozenTrial]:
    """The non-dominated feasible COMPLETE trials (every constraint value <= 0)."""
    ok = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None
          and all(v <= 0 for v in t.constraints.values())]
    if not ok:
        return []
    return [t for t, on in zip(ok, is_pareto_front(_losses(ok, directions))) if on]


def tournament(front: list[FrozenTrial], directions: list[StudyDirection],
               rng: np.random.RandomState) -> FrozenTrial:
    """NSGA-II's binary tournament within the front: the less crowded of two."""
    if len(front) == 1:
        return front[0]
    crowd = _crowding(_losses(front, directions))
    a, b = rng.choice(len(front), size=2, replace=False)
    return front[a] if crowd[a] >= crowd[b] else front[b]


class History:
    """What a sampler knows of a study's finished trials, each folded in once: their
    parameter sets, the feasible front (the front of the old front and the new trials is
    the front of all), and how many trials of each kind (refine, base) finished. A suggest
    then costs one pass over the trial list, not a front and a key per trial."""

    def __init__(self) -> None:
        self.reset(None)

    def reset(self, owner: object) -> None:
        self.owner = owner
        self.done: set[int] = set()
        self.keys: set[frozenset[tuple[str, Any]]] = set()
        self.front: list[FrozenTrial] = []
        self.misses: list[FrozenTrial] = []  # infeasible COMPLETE trials
        self.counts = np.full(2, 2.0)  # finished trials, refine and base, from two each

    def update(self, owner: object, directions: list[StudyDirection],
               trials: list[FrozenTrial]) -> None:
        if owner != self.owner:
            self.reset(owner)
        new = [t for t in trials if t.state.is_finished() and t.number not in self.done]
        if not new:
            return
        for t in new:
            self.done.add(t.number)
            if t.params:
                self.keys.add(param_key(t.params))
            if not enqueued(t):
                self.counts[int(not t.system_attrs.get(PLAN_ATTR))] += 1
            if t.state == TrialState.COMPLETE and t.values is not None and t.params and \
                    _recoverable(t):
                self.misses.append(t)
        self.front = sorted(feasible_front(self.front + new, directions),
                            key=lambda t: t.number)

    @classmethod
    def near_misses_of(cls, study: Study) -> list[FrozenTrial]:
        """`near_misses` of a whole study, folded in afresh (for tests and reports)."""
        h = cls()
        h.update(study.study_name, study.directions, study.get_trials(deepcopy=False))
        return h.near_misses(study.directions)

    def near_misses(self, directions: list[StudyDirection]) -> list[FrozenTrial]:
        """Infeasible trials that no feasible front member dominates: had they kept within
        the constraints, they would be on the front (more recovery may get them there)."""
        if not self.misses or not self.front:
            return list(self.misses) if not self.front else []
        miss, front = _losses(self.misses, directions), _losses(self.front, directions)
        le = (front[:, None, :] <= miss[None, :, :]).all(axis=2)
        lt = (front[:, None, :] < miss[None, :, :]).any(axis=2)
        dominated = (le & lt).any(axis=0)
        # The front only improves: a miss it dominates now stays dominated.
        self.misses = [t for t, d in zip(self.misses, dominated) if not d]
        return list(self.misses)



RECOVERABLE = ("accuracy", "accuracy_drop", "perplexity")


def _violations(t: FrozenTrial) -> dict[str, float]:
    """Broken constraints by name. Optuna also lists the dashboard's legacy list under
    "0", "1", ...: those repeat named ones, so they count only when nothing has a name."""
    named = {k: v for k, v in t.constraints.items() if not k.isdigit()}
    return {name: v for name, v in (named or t.constraints).items() if v > 0}


def _recoverable(t: FrozenTrial) -> bool:
    """Infeasible only on constraints of metrics that recovery training moves."""
    broken = _violations(t)
    return bool(broken) and all(re.split(r"[<>]=", name)[0] in RECOVERABLE for name in broken)


def least_violating(misses: list[FrozenTrial], rng: np.random.RandomState) -> FrozenTrial:
    """Binary tournament: of two near misses, the one that broke its constraints least."""
    if len(misses) == 1:
        return misses[0]
    a, b = (misses[int(i)] for i in rng.choice(len(misses), size=2, replace=False))
    return a if max(_violations(a).values()) <= max(_violations(b).values()) else b



def enqueued(t: FrozenTrial) -> bool:
    """Enqueued (a seed, a retry): its parameters were not the sampler's choice."""
    return is_enqueued(t) or bool(t.user_attrs.get(attrs.SEEDED))
