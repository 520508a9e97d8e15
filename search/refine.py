"""Local refinement around the feasible front, mixed with a global sampler.

A study starts from strong seeds (the sensitivity-guided config, Deep Compression's
recipe). TPE in 20-30 conditional dimensions does not find their simple neighbours ("one
bit fewer", "a few points more sparsity", "this group to int8") within a small budget,
so the seeds stayed the best trials. `RefineSampler` spends a share of the trials on
those neighbours: it picks a member of the feasible Pareto front (binary tournament on
crowding distance, as NSGA-II does, so the front's ends are refined most) and either
takes a directed step towards a smaller model (`neighbours.compress_step`: a few points
more sparsity, one bit fewer, a stronger quantizer for one group, mostly in the group
that holds the bytes, sometimes with a recovery step) or changes one to three of its
parameters by one random step each; neither touches a parameter whose value changes
nothing (`neighbours.inert`). A parent that was itself a refinement may instead repeat
the numeric step that led to it (Hooke and Jeeves' pattern move), so "a few points more
sparsity" that worked is tried again. The other trials go to the base
sampler (csearch's windowed TPE), which keeps exploring globally, so a poor seed does not
trap the study. With `adaptive`, the share of refinements follows which of the two kinds
of trial lands on the front more often, between 25 % and 75 %.

Constraints: only feasible COMPLETE trials (every stored constraint value <= 0, Optuna's
rule) are parents. Conditional parameters: a child is built in the space's declaration
order, so a changed choice drops the parameters it switches off and samples the ones it
switches on. Ranges come from the parent trial's own distributions where it has them (a
group the sensitivity pass pinned to fp32 stays pinned). Many workers: the planned child
is stored on its trial before sampling (system attr `csearch:refine`), and no plan equals
the parameters of any other trial, finished, running or planned; after storing, a plan
that a lower-numbered open trial also chose is given up and planned again.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from typing import Any

import numpy as np
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import BaseSampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from spaces import Param, Space

from . import attrs
from ._optuna import contains, is_enqueued, is_pareto_front, storage_of, trial_id_of
from ._optuna.tpe import _crowding, _numbered
from .neighbours import compress_step, inert, recovery_step

__all__ = ["PLAN_ATTR", "REFINE_SHARE", "RefineSampler", "directed", "mutate", "param_key",
           "repair",
           "pattern_move"]

PLAN_ATTR = "csearch:refine"  # system attr: {"parent": number, "params": planned params}
REFINE_SHARE = 0.5  # share of the sampler's trials that refine the front
ADAPTIVE_BOUNDS = (0.25, 0.75)  # an adaptive share stays within these
PATTERN_P = 0.5  # a parent that was itself a refinement: chance its step is repeated
DIRECTED_P = 0.7  # otherwise: chance of a directed step towards a smaller model
REPAIR_P = 0.25  # chance a refinement gives a near miss more recovery instead
_STEP = 0.1  # a float step: N(0, _STEP) of the range (log range if log)
_N_CHANGES = (1, 2, 3)
_P_CHANGES = (0.5, 0.3, 0.2)
_OPEN = (TrialState.RUNNING, TrialState.WAITING)


def param_key(params: dict[str, Any]) -> frozenset[tuple[str, Any]]:
    """A parameter set as a hashable value: two trials with equal keys are the same config."""
    return frozenset(params.items())


def _distribution(p: Param) -> BaseDistribution:
    """The distribution `Param.suggest` asks for."""
    if p.type == "categorical":
        return CategoricalDistribution(list(p.choices))
    if p.type == "int":
        return IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
    return FloatDistribution(p.low, p.high, log=p.log, step=p.step)


def fits(dist: BaseDistribution, value: Any) -> bool:
    """Whether `value` is one the distribution can return."""
    if isinstance(dist, CategoricalDistribution):
        return value in dist.choices
    return contains(dist, value)


def _random(dist: BaseDistribution, rng: np.random.RandomState) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return dist.choices[rng.randint(len(dist.choices))]
    assert isinstance(dist, (FloatDistribution, IntDistribution))
    return _from_unit(dist, rng.uniform())


def _to_unit(dist: FloatDistribution | IntDistribution, value: float) -> float:
    lo, hi, v = float(dist.low), float(dist.high), float(value)
    if dist.log:
        lo, hi, v = np.log(lo), np.log(hi), np.log(v)
    return 0.0 if hi == lo else (v - lo) / (hi - lo)


def _from_unit(dist: FloatDistribution | IntDistribution, u: float) -> Any:
    lo, hi = float(dist.low), float(dist.high)
    u = min(1.0, max(0.0, u))
    v = float(np.exp(np.log(lo) + u * (np.log(hi) - np.log(lo)))) if dist.log \
        else lo + u * (hi - lo)
    step = dist.step
    if step is not None:
        v = lo + round((v - lo) / step) * step
    v = min(hi, max(lo, v))
    return int(round(v)) if isinstance(dist, IntDistribution) else v


def _step(dist: BaseDistribution, value: Any, rng: np.random.RandomState) -> Any:
    """One neighbour of `value`: another choice; an int one step up or down (a fraction
    of the range when it has many steps); a float moved by N(0, _STEP) of its range."""
    if isinstance(dist, CategoricalDistribution):
        others = [c for c in dist.choices if c != value]
        return others[rng.randint(len(others))] if others else value
    assert isinstance(dist, (FloatDistribution, IntDistribution))
    if isinstance(dist, IntDistribution) and (dist.high - dist.low) // dist.step <= 16:
        up = value + dist.step <= dist.high
        down = value - dist.step >= dist.low
        if up and (not down or rng.rand() < 0.5):
            return value + dist.step
        return value - dist.step if down else value
    u = _to_unit(dist, value)
    for _ in range(8):  # a step that rounds back onto the value is no step
        new = _from_unit(dist, u + rng.normal(0.0, _STEP))
        if new != value:
            return new
    return value


def _mutable(dist: BaseDistribution) -> bool:
    return not dist.single()


def _dists(space: Space, parent: FrozenTrial | dict[str, Any],
           parent_dists: dict[str, BaseDistribution] | None) -> tuple[dict[str, Any], Any]:
    """The parent's values, and each parameter's distribution: the parent's own where it
    has one (a pinned group stays pinned), else the space's."""
    if isinstance(parent, FrozenTrial):
        values, dists = dict(parent.params), dict(parent.distributions)
    else:
        values, dists = dict(parent), dict(parent_dists or {})

    def dist_of(p: Param) -> BaseDistribution:
        d = dists.get(p.name)
        return d if d is not None else _distribution(p)

    return values, dist_of


def mutate(space: Space, parent: FrozenTrial | dict[str, Any], rng: np.random.RandomState,
           parent_dists: dict[str, BaseDistribution] | None = None,
           groups: Iterable[str] | None = None) -> dict[str, Any]:
    """A neighbour of `parent`'s config: one to three of its active parameters stepped
    (`_step`), then the space walked in declaration order so that the child holds exactly
    its active parameters (parameters switched on take a random value in range)."""
    values, dist_of = _dists(space, parent, parent_dists)
    skip = inert(values, groups)
    active = [p for p in space.params
              if p.name in values and p.name not in skip and _mutable(dist_of(p))]
    if not active:
        return _complete(space, values, dist_of, rng)
    k = min(len(active), int(rng.choice(_N_CHANGES, p=_P_CHANGES)))
    changed = dict(values)
    for i in rng.choice(len(active), size=k, replace=False):
        p = active[int(i)]
        changed[p.name] = _step(dist_of(p), values[p.name], rng)
    return _complete(space, changed, dist_of, rng)


def pattern_move(space: Space, parent: FrozenTrial, grand: dict[str, Any],
                 rng: np.random.RandomState) -> dict[str, Any] | None:
    """Hooke and Jeeves' pattern move: the numeric step that took `grand` (the parent's own
    parent's params) to `parent`, which reached the front, taken once more (clipped to the
    range); None if it moves nothing. Chains "a few points more sparsity" into more."""
    values, dist_of = _dists(space, parent, None)
    moved, changed = dict(values), False
    for p in space.params:
        v, g, d = values.get(p.name), grand.get(p.name), dist_of(p)
        if v is None or g is None or v == g or not isinstance(d, (FloatDistribution,
                                                                   IntDistribution)):
            continue
        if d.log:
            new = _from_unit(d, 2 * _to_unit(d, v) - _to_unit(d, g))
        else:
            new = min(d.high, max(d.low, v + (v - g)))
            new = int(round(new)) if isinstance(d, IntDistribution) else float(new)
        if new != v and fits(d, new):
            moved[p.name], changed = new, True
    return _complete(space, moved, dist_of, rng) if changed else None


def _complete(space: Space, values: dict[str, Any], dist_of: Any,
              rng: np.random.RandomState) -> dict[str, Any]:
    child: dict[str, Any] = {}
    for p in space.params:
        if not p.active(child):
            continue
        d = dist_of(p)
        v = values.get(p.name)
        child[p.name] = v if v is not None and fits(d, v) else _random(d, rng)
    return child


def feasible_front(trials: Iterable[FrozenTrial],
                   directions: list[StudyDirection]) -> list[FrozenTrial]:
    """The non-dominated feasible COMPLETE trials (every constraint value <= 0)."""
    ok = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None
          and all(v <= 0 for v in t.constraints.values())]
    if not ok:
        return []
    signs = np.array([-1.0 if d == StudyDirection.MAXIMIZE else 1.0 for d in directions])
    loss = np.array([t.values for t in ok], dtype=float) * signs
    return [t for t, on in zip(ok, is_pareto_front(loss)) if on]


def _tournament(front: list[FrozenTrial], directions: list[StudyDirection],
                rng: np.random.RandomState) -> FrozenTrial:
    """NSGA-II's binary tournament within the front: the less crowded of two."""
    if len(front) == 1:
        return front[0]
    signs = np.array([-1.0 if d == StudyDirection.MAXIMIZE else 1.0 for d in directions])
    crowd = _crowding(np.array([t.values for t in front], dtype=float) * signs)
    a, b = rng.choice(len(front), size=2, replace=False)
    return front[a] if crowd[a] >= crowd[b] else front[b]


class _History:
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
            if not _enqueued(t):
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
        signs = np.array([-1.0 if d == StudyDirection.MAXIMIZE else 1.0 for d in directions])
        miss = np.array([t.values for t in self.misses], dtype=float) * signs
        front = np.array([t.values for t in self.front], dtype=float) * signs
        le = (front[:, None, :] <= miss[None, :, :]).all(axis=2)
        lt = (front[:, None, :] < miss[None, :, :]).any(axis=2)
        dominated = (le & lt).any(axis=0)
        # The front only improves: a miss it dominates now stays dominated.
        self.misses = [t for t, d in zip(self.misses, dominated) if not d]
        return list(self.misses)


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
        self._history = _History()

    def reseed_rng(self) -> None:
        self._base.reseed_rng()
        self._rng = np.random.RandomState()

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial
                                    ) -> dict[str, BaseDistribution]:
        return self._base.infer_relative_search_space(study, trial)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._base.before_trial(study, trial)
        if _enqueued(trial):
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
            if not _enqueued(t):
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
                    parent = _least_violating(misses, self._rng)
                    cand = repair(self._space, parent, self._rng)
                    if cand is not None and param_key(cand) not in taken:
                        child = cand
                        break
                parent = _tournament(front, study.directions, self._rng)
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


def directed(space: Space, parent: FrozenTrial, rng: np.random.RandomState,
             shares: dict[str, float] | None = None) -> dict[str, Any] | None:
    """A child of `parent` one step towards a smaller model (`neighbours.compress_step`),
    its conditional parameters completed; None if nothing can move."""
    values, dist_of = _dists(space, parent, None)
    child = compress_step(space, values, dist_of, rng, shares)
    return None if child is None else _complete(space, child, dist_of, rng)


def repair(space: Space, miss: FrozenTrial, rng: np.random.RandomState
           ) -> dict[str, Any] | None:
    """A near miss given more recovery (`neighbours.recovery_step`): the same compression
    with one more epoch or another learning rate; None if neither can move."""
    values, dist_of = _dists(space, miss, None)
    child = recovery_step(space, values, dist_of, rng)
    return None if child is None else _complete(space, child, dist_of, rng)


# Metrics that recovery training moves; a trial infeasible on anything else (memory, size,
# latency) is no near miss: another epoch cannot change it.
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


def _least_violating(misses: list[FrozenTrial], rng: np.random.RandomState) -> FrozenTrial:
    """Binary tournament: of two near misses, the one that broke its constraints least."""
    if len(misses) == 1:
        return misses[0]
    a, b = (misses[int(i)] for i in rng.choice(len(misses), size=2, replace=False))
    return a if max(_violations(a).values()) <= max(_violations(b).values()) else b


def _shares(study: Study) -> dict[str, float]:
    """Each layer group's share of the model's weights, from the study's sensitivity
    pass (empty when it has none)."""
    sens = study.user_attrs.get(attrs.SENSITIVITY) or {}
    weights = sens.get("weights") or {}
    total = sum(weights.values())
    return {g: w / total for g, w in weights.items()} if total else {}


def _enqueued(t: FrozenTrial) -> bool:
    """Enqueued (a seed, a retry): its parameters were not the sampler's choice."""
    return is_enqueued(t) or bool(t.user_attrs.get(attrs.SEEDED))


def _configs(t: FrozenTrial) -> list[dict[str, Any]]:
    """The parameter sets a trial holds: its params, and for an open trial its plan."""
    out = [t.params] if t.params else []
    if t.state in _OPEN:
        plan = t.system_attrs.get(PLAN_ATTR)
        if plan:
            out.append(plan["params"])
    return out
