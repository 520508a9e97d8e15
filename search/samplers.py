"""Sampler choice. The default, `refine`, spends part of the trials on neighbours of the
feasible front (search/refine/: the seeds are good, and their neighbours are what TPE
does not find in a small budget) and the rest on multivariate, grouped TPE: independent
TPE ignores how pruning, quantization and serving parameters interact. TPE models a
bounded window of the history (`WindowedTPESampler`) so that its cost per trial stops
growing with the study."""

from __future__ import annotations

import warnings

import optuna
from optuna.samplers import BaseSampler

from spaces import Space

from ._optuna.tpe import TPE_BEST, TPE_WINDOW, WindowedTPESampler
from .errors import SpecError
from .refine import RefineSampler
from .spec import SAMPLERS

__all__ = ["RefineSampler", "TPE_BEST", "TPE_WINDOW", "WindowedTPESampler", "make_sampler"]


def _grid(space: Space) -> dict[str, list[object]]:
    grid: dict[str, list[object]] = {}
    for p in space.params:
        if p.type == "categorical":
            grid[p.name] = list(p.choices)
        elif p.type == "int":
            lo, hi = int(p.low), int(p.high)
            grid[p.name] = sorted({lo, (lo + hi) // 2, hi})
        else:
            mid = (p.low * p.high) ** 0.5 if p.log else (p.low + p.high) / 2
            grid[p.name] = sorted({p.low, mid, p.high})
    return grid


def _tpe(seed: int | None) -> WindowedTPESampler:
    return WindowedTPESampler(multivariate=True, group=True, seed=seed, constant_liar=True)


def make_sampler(name: str, seed: int | None, space: Space) -> BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":
            return _tpe(seed)
        if name == "refine":
            return RefineSampler(_tpe(seed), space, adaptive=True, seed=seed)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed)
        if name == "nsga3":
            return optuna.samplers.NSGAIIISampler(seed=seed)
        if name == "gp":
            return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "grid":
            return optuna.samplers.GridSampler(_grid(space), seed=seed)
    raise SpecError(f"unknown sampler {name!r}; valid: {', '.join(SAMPLERS)}")
