"""Neighbours of a parameter set: one to three random steps, the pattern move, a directed
step towards a smaller model, and a near miss given more recovery. Every child is
completed in the space's declaration order, so its conditionals stay consistent."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial

from spaces import Param, Space

from .._optuna import contains
from .neighbours import compress_step, inert, recovery_step

__all__ = ["param_key", "distribution", "fits", "mutate", "pattern_move", "directed",
           "repair", "complete"]

_STEP = 0.1  # a float step: N(0, _STEP) of the range (log range if log)
_N_CHANGES = (1, 2, 3)
_P_CHANGES = (0.5, 0.3, 0.2)


def param_key(params: dict[str, Any]) -> frozenset[tuple[str, Any]]:
    """A parameter set as a hashable value: two trials with equal keys are the same config."""
    return frozenset(params.items())


def distribution(p: Param) -> BaseDistribution:
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


def dists(space: Space, parent: FrozenTrial | dict[str, Any],
          parent_dists: dict[str, BaseDistribution] | None) -> tuple[dict[str, Any], Any]:
    """The parent's values, and each parameter's distribution: the parent's own where it
    has one (a pinned group stays pinned), else the space's."""
    if isinstance(parent, FrozenTrial):
        values, dists = dict(parent.params), dict(parent.distributions)
    else:
        values, dists = dict(parent), dict(parent_dists or {})

    def dist_of(p: Param) -> BaseDistribution:
        d = dists.get(p.name)
        return d if d is not None else distribution(p)

    return values, dist_of


def mutate(space: Space, parent: FrozenTrial | dict[str, Any], rng: np.random.RandomState,
           parent_dists: dict[str, BaseDistribution] | None = None,
           groups: Iterable[str] | None = None) -> dict[str, Any]:
    """A neighbour of `parent`'s config: one to three of its active parameters stepped
    (`_step`), then the space walked in declaration order so that the child holds exactly
    its active parameters (parameters switched on take a random value in range)."""
    values, dist_of = dists(space, parent, parent_dists)
    skip = inert(values, groups)
    active = [p for p in space.params
              if p.name in values and p.name not in skip and _mutable(dist_of(p))]
    if not active:
        return complete(space, values, dist_of, rng)
    k = min(len(active), int(rng.choice(_N_CHANGES, p=_P_CHANGES)))
    changed = dict(values)
    for i in rng.choice(len(active), size=k, replace=False):
        p = active[int(i)]
        changed[p.name] = _step(dist_of(p), values[p.name], rng)
    return complete(space, changed, dist_of, rng)


def pattern_move(space: Space, parent: FrozenTrial, grand: dict[str, Any],
                 rng: np.random.RandomState) -> dict[str, Any] | None:
    """Hooke and Jeeves' pattern move: the numeric step that took `grand` (the parent's own
    parent's params) to `parent`, which reached the front, taken once more (clipped to the
    range); None if it moves nothing. Chains "a few points more sparsity" into more."""
    values, dist_of = dists(space, parent, None)
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
    return complete(space, moved, dist_of, rng) if changed else None


def complete(space: Space, values: dict[str, Any], dist_of: Any,
             rng: np.random.RandomState) -> dict[str, Any]:
    child: dict[str, Any] = {}
    for p in space.params:
        if not p.active(child):
            continue
        d = dist_of(p)
        v = values.get(p.name)
        child[p.name] = v if v is not None and fits(d, v) else _random(d, rng)
    return child



def directed(space: Space, parent: FrozenTrial, rng: np.random.RandomState,
             shares: dict[str, float] | None = None) -> dict[str, Any] | None:
    """A child of `parent` one step towards a smaller model (`neighbours.compress_step`),
    its conditional parameters completed; None if nothing can move."""
    values, dist_of = dists(space, parent, None)
    child = compress_step(space, values, dist_of, rng, shares)
    return None if child is None else complete(space, child, dist_of, rng)


def repair(space: Space, miss: FrozenTrial, rng: np.random.RandomState
           ) -> dict[str, Any] | None:
    """A near miss given more recovery (`neighbours.recovery_step`): the same compression
    with one more epoch or another learning rate; None if neither can move."""
    values, dist_of = dists(space, miss, None)
    child = recovery_step(space, values, dist_of, rng)
    return None if child is None else complete(space, child, dist_of, rng)


# Metrics that recovery training moves; a trial infeasible on anything else (memory, size,
