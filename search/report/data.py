"""The report's data: each `collect_*` returns plain dataclasses, no plotly.

As `optuna.visualization` splits data from drawing; tests check the data, the page only
draws it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from .. import attrs
from .._optuna import hypervolume
from ..results import is_feasible, pareto_mask
from ._common import (
    HV_MARGIN,
    MAX_IMPORTANCE_TRIALS,
    Trials,
    _complete,
    _dirs,
    _losses,
    _names,
    _trials,
)


@dataclass
class ParetoData:
    """Every complete trial's objective values; `feasible` and `on_front` flag each one.

    The front is computed among feasible trials only, like `study.best_trials`.
    `seeded` flags the trials csearch enqueued (warm-start seeds, re-queued retries), so
    a reader sees what the search itself added.
    """

    names: list[str]
    directions: list[str]
    numbers: list[int] = field(default_factory=list)
    values: list[list[float]] = field(default_factory=list)
    feasible: list[bool] = field(default_factory=list)
    on_front: list[bool] = field(default_factory=list)
    seeded: list[bool] = field(default_factory=list)

    def front_numbers(self) -> list[int]:
        return [n for n, f in zip(self.numbers, self.on_front) if f]

    def front_from_search(self) -> list[int]:
        """Front trials the sampler chose (not enqueued)."""
        return [n for n, f, s in zip(self.numbers, self.on_front, self.seeded) if f and not s]


def collect_pareto(study: optuna.Study, trials: Trials | None = None) -> ParetoData:
    names, dirs = _names(study), _dirs(study)
    done = _complete(_trials(study, trials), len(dirs))
    data = ParetoData(names, dirs)
    if not done:
        return data
    values = np.array([t.values for t in done], dtype=float)
    feasible = np.array([is_feasible(t) is not False for t in done])
    on_front = np.zeros(len(done), dtype=bool)
    if feasible.any():
        on_front[feasible] = pareto_mask(_losses(values[feasible], dirs))
    data.numbers = [t.number for t in done]
    data.values = values.tolist()
    data.feasible = feasible.tolist()
    data.on_front = on_front.tolist()
    data.seeded = [bool(t.user_attrs.get(attrs.SEEDED)) for t in done]
    return data


@dataclass
class HypervolumeData:
    """Hypervolume of the feasible front after each complete trial (in trial order).

    Objectives are normalised so that the ideal point (best value of each objective among
    feasible trials) is 0 and the fixed reference point (worst feasible value plus
    `HV_MARGIN` of the range) is 1, so the hypervolume is a fraction of that box.
    """

    names: list[str]
    directions: list[str]
    numbers: list[int] = field(default_factory=list)
    hypervolume: list[float] = field(default_factory=list)
    reference_point: list[float] = field(default_factory=list)  # in objective units
    ideal_point: list[float] = field(default_factory=list)


def collect_hypervolume(study: optuna.Study, trials: Trials | None = None) -> HypervolumeData:
    names, dirs = _names(study), _dirs(study)
    data = HypervolumeData(names, dirs)
    done = sorted(_complete(_trials(study, trials), len(dirs)), key=lambda t: t.number)
    if not done:
        return data
    feasible = np.array([is_feasible(t) is not False for t in done])
    losses = _losses(np.array([t.values for t in done], dtype=float), dirs)
    data.numbers = [t.number for t in done]
    if not feasible.any():
        data.hypervolume = [0.0] * len(done)
        return data
    best, worst = losses[feasible].min(axis=0), losses[feasible].max(axis=0)
    span = worst - best
    span = np.where(span > 0, span, np.maximum(np.abs(worst), 1.0))
    ref = worst + HV_MARGIN * span
    scale = ref - best
    norm = (losses - best) / scale  # feasible points lie in [0, 1/(1+margin)]
    ref_n = np.ones(len(dirs))
    signs = np.array([-1.0 if d == "maximize" else 1.0 for d in dirs])
    data.reference_point = (ref * signs).tolist()
    data.ideal_point = (best * signs).tolist()

    front: np.ndarray | None = None
    hv = 0.0
    out = []
    for i in range(len(done)):
        p = norm[i]
        if feasible[i] and (front is None or not (front <= p).all(axis=1).any()):
            # A new non-dominated point: drop what it dominates, recompute the volume.
            if front is None:
                front = p[None, :]
            else:
                keep = ~(p <= front).all(axis=1)
                front = np.vstack([front[keep], p[None, :]])
            if len(dirs) == 1:
                hv = float(ref_n[0] - front[:, 0].min())
            else:
                hv = hypervolume(front, ref_n)
        out.append(hv)
    data.hypervolume = out
    return data


@dataclass
class ImportanceData:
    """Parameter importances per objective ({objective: {param: importance}}).

    An objective whose importances could not be computed (too few trials, a single
    parameter value...) is in `skipped` with the reason instead.
    """

    importances: dict[str, dict[str, float]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    n_trials: int = 0  # complete trials the importances were computed on
    n_complete: int = 0  # complete trials in the study


def collect_importances(study: optuna.Study, trials: Trials | None = None,
                        max_trials: int = MAX_IMPORTANCE_TRIALS) -> ImportanceData:
    """PED-ANOVA importances (Optuna's default) for each objective.

    Computed on the latest `max_trials` complete trials, through an in-memory copy of
    them, so a large study does not go back to its storage once per objective.
    """
    names, dirs = _names(study), _dirs(study)
    complete = _complete(_trials(study, trials), len(dirs))
    done = complete[-max_trials:]
    data = ImportanceData(n_trials=len(done), n_complete=len(complete))
    if len(done) < 2:
        for n in names:
            data.skipped[n] = f"needs at least 2 complete trials, has {len(done)}"
        return data
    # A light in-memory copy (params and values only): the evaluator deep-copies trials.
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line
    try:
        view = optuna.create_study(directions=study.directions)
    finally:
        optuna.logging.set_verbosity(verbosity)
    view.add_trials([optuna.trial.create_trial(
        params=t.params, distributions=t.distributions, values=t.values) for t in done])
    for i, (name, d) in enumerate(zip(names, dirs)):
        sign = -1.0 if d == "maximize" else 1.0  # PED-ANOVA assumes lower is better
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                imp = optuna.importance.get_param_importances(
                    view, target=lambda t, i=i, s=sign: s * t.values[i])
        except Exception as e:  # too few distinct values, a single parameter, ...
            data.skipped[name] = f"{type(e).__name__}: {e}"[:200]
            continue
        clean = {k: float(v) for k, v in imp.items() if math.isfinite(v)}
        if clean:
            data.importances[name] = clean
        else:
            data.skipped[name] = "no parameter varies among the complete trials"
    return data


@dataclass
class ParallelData:
    """Columns of a parallel-coordinates plot: parameters, then objectives.

    A categorical parameter's values are codes into `ticktext`; a trial where a
    conditional parameter is inactive has NaN there.
    """

    numbers: list[int] = field(default_factory=list)
    feasible: list[bool] = field(default_factory=list)
    columns: list[dict[str, Any]] = field(default_factory=list)  # label, values, ticktext?


def collect_parallel(study: optuna.Study, trials: Trials | None = None) -> ParallelData:
    names = _names(study)
    done = _complete(_trials(study, trials), len(names))
    data = ParallelData()
    if not done:
        return data
    data.numbers = [t.number for t in done]
    data.feasible = [is_feasible(t) is not False for t in done]
    params: list[str] = []
    seen: set[str] = set()
    for t in done:
        for k in t.params:
            if k not in seen:
                seen.add(k)
                params.append(k)
    for p in params:
        raw = [t.params.get(p) for t in done]
        present = [v for v in raw if v is not None]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
            data.columns.append({"label": p, "values": [
                float(v) if v is not None else float("nan") for v in raw]})
        else:
            cats = sorted({str(v) for v in present})
            code = {c: i for i, c in enumerate(cats)}
            data.columns.append({"label": p, "ticktext": cats, "values": [
                float(code[str(v)]) if v is not None else float("nan") for v in raw]})
    for i, n in enumerate(names):
        data.columns.append({"label": n, "values": [float(t.values[i]) for t in done]})
    return data


@dataclass
class TimelineData:
    """One bar per started trial: which worker ran it, from when to when, how it ended."""

    numbers: list[int] = field(default_factory=list)
    workers: list[str] = field(default_factory=list)
    start: list[str] = field(default_factory=list)  # ISO datetimes
    end: list[str] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    status: list[str] = field(default_factory=list)  # COMPLETE, INFEASIBLE, PRUNED, FAIL...


def _status(t: FrozenTrial) -> str:
    if t.state == TrialState.COMPLETE and is_feasible(t) is False:
        return "INFEASIBLE"
    return t.state.name


def collect_timeline(study: optuna.Study, trials: Trials | None = None) -> TimelineData:
    data = TimelineData()
    now = datetime.now()
    for t in _trials(study, trials):
        if t.datetime_start is None:
            continue
        end = t.datetime_complete or now
        data.numbers.append(t.number)
        data.workers.append(str(t.user_attrs.get(attrs.WORKER) or "unknown"))
        data.start.append(t.datetime_start.isoformat())
        data.end.append(end.isoformat())
        data.seconds.append(max(0.0, (end - t.datetime_start).total_seconds()))
        data.status.append(_status(t))
    return data


@dataclass
class ServingData:
    """The serving memory split (β = serve.cache_ratio, γ = serve.memory_ratio) of each
    complete trial against its cache hit rate and throughput."""

    numbers: list[int] = field(default_factory=list)
    cache_ratio: list[float] = field(default_factory=list)
    memory_ratio: list[float] = field(default_factory=list)
    cache_hit_rate: list[float] = field(default_factory=list)
    throughput_rps: list[float] = field(default_factory=list)
    feasible: list[bool] = field(default_factory=list)
    # The server's per-request overhead (the study's `serve_overhead_ms`) caps the replay
    # at 1000 / overhead requests per second.
    serve_overhead_ms: float | None = None
    # Per trial, from its replay's queueing: was the front end (the overhead on every
    # request) busier than the model? None for a trial measured before the figure existed.
    frontend_bound: list[bool | None] = field(default_factory=list)

    @property
    def server_bound(self) -> bool:
        """Every trial's replay spent more time in the server's front end than in the
        model: latency is the server's, whatever the model (the page says so)."""
        known = [b for b in self.frontend_bound if b is not None]
        return bool(self.serve_overhead_ms) and bool(known) and all(known)


def collect_serving(study: optuna.Study, trials: Trials | None = None) -> ServingData:
    overhead = (study.user_attrs.get(attrs.ENVIRONMENT) or {}).get("serve_overhead_ms")
    data = ServingData(serve_overhead_ms=float(overhead) if overhead else None)
    for t in _trials(study, trials):
        if t.state != TrialState.COMPLETE:
            continue
        m = t.user_attrs.get(attrs.METRICS) or {}
        beta, gamma = t.params.get("serve.cache_ratio"), t.params.get("serve.memory_ratio")
        hit, rps = m.get("cache_hit_rate"), m.get("throughput_rps")
        if None in (beta, gamma, hit, rps) or not all(
                math.isfinite(float(v)) for v in (beta, gamma, hit, rps)):
            continue
        data.numbers.append(t.number)
        data.cache_ratio.append(float(beta))
        data.memory_ratio.append(float(gamma))
        data.cache_hit_rate.append(float(hit))
        data.throughput_rps.append(float(rps))
        data.feasible.append(is_feasible(t) is not False)
        front, model = m.get("frontend_busy_share"), m.get("model_busy_share")
        data.frontend_bound.append(None if front is None or model is None
                                   else float(front) > float(model))
    return data
