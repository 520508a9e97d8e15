"""Directed neighbours of a compressed model, for `RefineSampler`.

A random one-step mutation in 15-25 conditional dimensions rarely lands on the step a
careful engineer would take next from a good compressed model: a few points more
sparsity in the group that holds the bytes, one bit fewer, the one group left at fp32
moved to int8, with one more recovery epoch or a livelier learning rate to pay for it.
`compress_step` takes exactly such a step; `inert` names the parameters whose value
changes nothing (so neither kind of step is wasted on them).

The directions are the compression space's own (`spaces/builtin/compression.toml`):
sparsity up, bits down, quantizer from none to dynamic int8 to low-bit. A parameter the
space does not have is never proposed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from spaces import INHERIT, Space, split_name

__all__ = ["compress_step", "recovery_step", "inert", "STRONGER", "RECOVERY_P"]

# Quantizers from weakest to strongest (per layer group or global).
STRONGER = ("none", "int8_weight_only", "int8_dynamic", "int4_weight_only", "int4_hqq",
            "lowbit")
DENSITY_KEPT = (0.6, 0.85)  # a sparsity step keeps this share of the remaining weights
THRESHOLD_UP = (0.2, 0.6)  # a magnitude threshold grows by exp(U(...))
RECOVERY_P = 0.5  # chance a compression step comes with a recovery step
BY_SHARE = 0.75  # share of a step's choice that follows the groups' weight shares
_LR_STEP = 0.2  # a recovery learning-rate step: N(0, _LR_STEP) of its log range
_SPARSER = ("prune.amount", "prune.structured_ratio")

DistOf = Callable[[Any], BaseDistribution]


def inert(values: Mapping[str, Any], groups: Iterable[str] | None = None) -> set[str]:
    """Parameters whose value has no effect given the others: the recovery settings when
    there is no fine-tuning, and a global prune amount or quantizer that every one of the
    workload's layer `groups` overrides (a group that inherits, or has no value of its
    own, keeps the global one alive). Without `groups` no global setting is inert."""
    out: set[str] = set()
    amount = "train.steps" if "train.steps" in values else "train.epochs"
    if values.get(amount) == 0:
        out.update(n for n in values if n.startswith("train.") and n != amount)
    groups = list(groups or ())
    if not groups:
        return out
    if all(f"prune.amount[{g}]" in values for g in groups):
        out.add("prune.amount")
    if all(values.get(f"quant.method[{g}]", INHERIT) != INHERIT for g in groups):
        out.update({"quant.method", "quant.bits"} & values.keys())
    return out


def _compressed(base: str, dist: BaseDistribution, value: Any,
                rng: np.random.RandomState) -> Any | None:
    """`value` one step towards a smaller model, or None if it cannot go further."""
    if isinstance(dist, CategoricalDistribution):
        if base != "quant.method" or value not in STRONGER:
            return None
        stronger = [c for c in STRONGER[STRONGER.index(value) + 1:] if c in dist.choices]
        return stronger[0] if stronger else None
    assert isinstance(dist, (FloatDistribution, IntDistribution))
    if base == "quant.bits":
        new = value - (dist.step or 1)
        return new if new >= dist.low else None
    if base in _SPARSER:
        new = 1.0 - (1.0 - value) * rng.uniform(*DENSITY_KEPT)
    elif base == "prune.threshold":
        new = value * float(np.exp(rng.uniform(*THRESHOLD_UP)))
    else:
        return None
    if dist.step is not None:  # a stepped range: the next value on its grid
        new = dist.low + np.ceil((new - dist.low) / dist.step) * dist.step
    new = min(float(dist.high), float(new))
    return new if new > value else None


def recovery_step(space: Space, values: dict[str, Any], dist_of: DistOf,
                  rng: np.random.RandomState) -> dict[str, Any] | None:
    """`values` with one more fine-tuning epoch, or another learning rate (a wide step
    on its log range), before conditionals are completed; None if neither can move."""
    by_name = {p.name: p for p in space.params}
    # How much recovery: optimizer steps where the space has them (one more step would
    # barely move, so a step doubles them), else one more epoch.
    amount = "train.steps" if "train.steps" in by_name else "train.epochs"
    dists = {n: dist_of(by_name[n]) for n in (amount, "train.lr") if n in by_name}
    options = []
    count = dists.get(amount)
    if isinstance(count, IntDistribution) and \
            values.get(amount, count.high) + count.step <= count.high:
        options.append(amount)
    lr = dists.get("train.lr")
    if isinstance(lr, FloatDistribution) and "train.lr" in values and lr.log and \
            values.get(amount, 0) > 0:
        options.append("train.lr")
    if not options:
        return None
    child = dict(values)
    pick = options[rng.randint(len(options))]
    if pick == amount:
        assert isinstance(count, IntDistribution)
        more = max(count.step, child[pick]) if amount == "train.steps" else count.step
        child[pick] = min(count.high, child[pick] + more)
        return child
    assert isinstance(lr, FloatDistribution)
    lo, hi = np.log(lr.low), np.log(lr.high)
    for _ in range(8):
        new = float(np.exp(np.clip(np.log(child[pick]) + rng.normal(0.0, _LR_STEP) * (hi - lo),
                                   lo, hi)))
        if new != values[pick]:
            child[pick] = new
            return child
    return None


def _agreement(values: Mapping[str, Any], name: str, new: Any) -> float:
    """Share of the other layer groups that already hold `new` for this parameter: the
    one group left at fp32 while the rest are int8 is the obvious next step."""
    base, group = split_name(name)
    if group is None:
        return 0.0
    peers = [v for n, v in values.items() if n != name and split_name(n)[0] == base
             and split_name(n)[1] is not None]
    return sum(v == new for v in peers) / len(peers) if peers else 0.0


def compress_step(space: Space, values: dict[str, Any], dist_of: DistOf,
                  rng: np.random.RandomState,
                  shares: Mapping[str, float] | None = None) -> dict[str, Any] | None:
    """`values` with one parameter stepped towards a smaller model (and, with chance
    RECOVERY_P, one recovery step), before conditionals are completed; None if no
    parameter can move. A quarter of the choice is uniform over the movable parameters,
    the rest (BY_SHARE) follows `shares` (each layer group's share of the weights), so the
    group that holds the bytes is compressed most often without starving the others; a
    step that brings a group in line with the other groups weighs up to twice as much."""
    shares = shares or {}
    skip = inert(values, shares)
    moves: list[tuple[str, Any, str | None]] = []
    for p in space.params:
        if p.name not in values or p.name in skip:
            continue
        d = dist_of(p)
        if d.single():
            continue
        base, group = split_name(p.name)
        new = _compressed(base, d, values[p.name], rng)
        if new is not None and new != values[p.name]:
            moves.append((p.name, new, group))
    if not moves:
        return None
    per_group = {g: sum(1 for _, _, h in moves if h == g) for _, _, g in moves}
    w = np.array([((1 - BY_SHARE) / len(moves)
                   + (BY_SHARE * shares.get(g, 0.0) / per_group[g] if g is not None else 0.0))
                  * (1.0 + _agreement(values, name, new)) for name, new, g in moves])
    name, new, _ = moves[rng.choice(len(moves), p=w / w.sum())]
    child = dict(values)
    child[name] = new
    base, group = split_name(name)
    if base == "quant.method" and new == "lowbit":  # from int8: one bit fewer, per channel
        by_name = {p.name: p for p in space.params}
        suffix = f"[{group}]" if group else ""
        bits = by_name.get(f"quant.bits{suffix}")
        d = dist_of(bits) if bits is not None else None
        if isinstance(d, IntDistribution):
            child[bits.name] = max(d.low, d.high - d.step)
        size = by_name.get(f"quant.group_size{suffix}")
        ds = dist_of(size) if size is not None else None
        if isinstance(ds, CategoricalDistribution) and 0 in ds.choices:
            child[size.name] = 0
    if rng.rand() < RECOVERY_P:
        child = recovery_step(space, child, dist_of, rng) or child
    return child
