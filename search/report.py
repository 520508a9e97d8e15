"""The HTML report of a study: one self-contained file with plotly inline, no network.

Data collection is split from drawing, as in `optuna.visualization`: every `collect_*`
returns plain data (dataclasses of lists and dicts, no plotly), every `plot_*` turns that
data into a plotly figure, and `write_report` puts the figures, a sortable table of the
Pareto trials (with their export commands) and the study's baseline and environment into
one HTML file. Trials are read from the storage once (`fastread.read_trials`, the same
trials as `get_trials(deepcopy=False)`, read without Optuna's ORM on RDB storages) and
every collector works on that list, so a study of 10,000 trials reports in seconds.
"""

from __future__ import annotations

import html
import json
import math
import shlex
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from .fastread import read_trials
from .results import is_feasible, pareto_mask
from .spec import BASELINE_ATTR, ENV_ATTR, SPEC_ATTR
from .storage import redact

__all__ = [
    "SensitivityData",
    "collect_sensitivity",
    "plot_sensitivity",
    "ParetoData",
    "HypervolumeData",
    "ImportanceData",
    "ParallelData",
    "TimelineData",
    "ServingData",
    "TableData",
    "ContextData",
    "collect_pareto",
    "collect_hypervolume",
    "collect_importances",
    "collect_parallel",
    "collect_timeline",
    "collect_serving",
    "collect_pareto_table",
    "collect_context",
    "plot_pareto",
    "plot_hypervolume",
    "plot_importances",
    "plot_parallel",
    "plot_timeline",
    "plot_serving",
    "export_command",
    "build_report",
    "write_report",
]

Trials = Sequence[FrozenTrial]

# Metrics shown in the Pareto table besides the objectives, when the trials have them.
TABLE_METRICS = ("accuracy_drop", "throughput_rps", "memory_mb", "cache_hit_rate", "sparsity")
# Importances are computed on at most this many complete trials (the latest ones).
MAX_IMPORTANCE_TRIALS = 1000
HV_MARGIN = 0.1  # the reference point lies this fraction of the range beyond the worst value

_GREY = "#c8c8c8"


# --- data ----------------------------------------------------------------------------

def _trials(study: optuna.Study, trials: Trials | None) -> Trials:
    return study.get_trials(deepcopy=False) if trials is None else trials


def _names(study: optuna.Study) -> list[str]:
    return list(study.metric_names or [f"objective{i}" for i in range(len(study.directions))])


def _dirs(study: optuna.Study) -> list[str]:
    return ["maximize" if d == StudyDirection.MAXIMIZE else "minimize"
            for d in study.directions]


def _complete(trials: Trials, n_obj: int) -> list[FrozenTrial]:
    return [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None
            and len(t.values) == n_obj and all(math.isfinite(v) for v in t.values)]


def _losses(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Objective values as losses (every objective minimised)."""
    signs = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    return values * signs


@dataclass
class ParetoData:
    """Every complete trial's objective values; `feasible` and `on_front` flag each one.

    The front is computed among feasible trials only, like `study.best_trials`.
    """

    names: list[str]
    directions: list[str]
    numbers: list[int] = field(default_factory=list)
    values: list[list[float]] = field(default_factory=list)
    feasible: list[bool] = field(default_factory=list)
    on_front: list[bool] = field(default_factory=list)

    def front_numbers(self) -> list[int]:
        return [n for n, f in zip(self.numbers, self.on_front) if f]


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
    from optuna._hypervolume import compute_hypervolume

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
                hv = float(compute_hypervolume(front, ref_n, assume_pareto=True))
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
        data.workers.append(str(t.user_attrs.get("worker") or "unknown"))
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


def collect_serving(study: optuna.Study, trials: Trials | None = None) -> ServingData:
    data = ServingData()
    for t in _trials(study, trials):
        if t.state != TrialState.COMPLETE:
            continue
        m = t.user_attrs.get("metrics") or {}
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
    return data


def export_command(study_name: str, storage_url: str | None, number: int) -> str:
    """The shell command that exports a trial (the storage password is redacted)."""
    url = redact(storage_url) if storage_url else "URL"
    return (f"csearch export --study {shlex.quote(study_name)} --storage {shlex.quote(url)} "
            f"--trial {number} -o {shlex.quote(f'export-{study_name}-{number}')}")


@dataclass
class TableData:
    """The feasible Pareto trials: one row each, with the command that exports it."""

    columns: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)


def collect_pareto_table(study: optuna.Study, trials: Trials | None = None,
                         storage_url: str | None = None,
                         pareto: ParetoData | None = None) -> TableData:
    trials = _trials(study, trials)
    pareto = pareto or collect_pareto(study, trials)
    front = set(pareto.front_numbers())
    by_number = {t.number: t for t in trials if t.number in front}
    baseline = study.user_attrs.get(BASELINE_ATTR) or {}
    extra = [k for k in TABLE_METRICS
             if any(k in (by_number[n].user_attrs.get("metrics") or {}) for n in by_number)]
    ratio = bool(baseline.get("size_mb"))
    data = TableData(columns=["number", *pareto.names, *extra,
                              *(["smaller"] if ratio else []), "params", "export"])
    for n in sorted(by_number):
        t = by_number[n]
        m = t.user_attrs.get("metrics") or {}
        row: dict[str, Any] = {"number": n}
        row.update({k: v for k, v in zip(pareto.names, t.values)})
        row.update({k: m.get(k) for k in extra})
        if ratio:
            size = m.get("size_mb")
            row["smaller"] = baseline["size_mb"] / size if size else None
        row["params"] = dict(t.params)
        row["export"] = export_command(study.study_name, storage_url, n)
        data.rows.append(row)
    return data


@dataclass
class ContextData:
    """What the study is: spec summary, baseline metrics, environment, trial counts."""

    study: str
    storage: str | None
    spec: dict[str, Any]
    baseline: dict[str, Any]
    environment: dict[str, Any]
    states: dict[str, int]
    n_trials: int
    n_feasible: int
    n_infeasible: int


def collect_context(study: optuna.Study, trials: Trials | None = None,
                    storage_url: str | None = None) -> ContextData:
    trials = _trials(study, trials)
    states: dict[str, int] = {}
    feas = infeas = 0
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
        if t.state == TrialState.COMPLETE:
            if is_feasible(t) is False:
                infeas += 1
            else:
                feas += 1
    spec = dict(study.user_attrs.get(SPEC_ATTR) or {})
    spec.pop("space_toml", None)
    return ContextData(
        study=study.study_name,
        storage=redact(storage_url) if storage_url else None,
        spec=spec,
        baseline=dict(study.user_attrs.get(BASELINE_ATTR) or {}),
        environment=dict(study.user_attrs.get(ENV_ATTR) or {}),
        states=states, n_trials=len(trials), n_feasible=feas, n_infeasible=infeas,
    )


# --- drawing -------------------------------------------------------------------------

@dataclass
class SensitivityData:
    """Accuracy drop of each layer group compressed alone (the study's sensitivity pass)."""

    groups: list[str] = field(default_factory=list)
    probes: list[str] = field(default_factory=list)
    drops: list[list[float]] = field(default_factory=list)  # [group][probe]
    guard: float | None = None
    pinned: list[str] = field(default_factory=list)


def collect_sensitivity(study: optuna.Study, trials: Trials | None = None) -> SensitivityData:
    from .sensitivity import SENSITIVITY_ATTR, pinned_groups

    sens = study.user_attrs.get(SENSITIVITY_ATTR)
    if not sens:
        return SensitivityData()
    groups = list(sens["drops"])
    probes = sorted({p for d in sens["drops"].values() for p in d})
    drops = [[float(sens["drops"][g].get(p, float("nan"))) for p in probes] for g in groups]
    return SensitivityData(groups, probes, drops, sens.get("guard"), pinned_groups(sens))


def plot_sensitivity(data: SensitivityData) -> Any:
    go = _go()
    fig = go.Figure()
    for j, probe in enumerate(data.probes):
        fig.add_bar(name=probe, x=data.groups, y=[row[j] for row in data.drops])
    if data.guard is not None:
        fig.add_hline(y=data.guard, line_dash="dash", annotation_text="accuracy guard")
    fig.update_layout(title="Sensitivity: accuracy drop with one group compressed alone"
                      + (f" (pinned to fp32: {', '.join(data.pinned)})" if data.pinned else ""),
                      barmode="group", xaxis_title="layer group",
                      yaxis_title="accuracy drop", height=420)
    return fig


def _go() -> Any:
    import plotly.graph_objects as go

    return go


def _label(name: str, direction: str) -> str:
    return f"{name} ({'max' if direction == 'maximize' else 'min'})"


def plot_pareto(data: ParetoData) -> list[Any]:
    """2D scatter of every pair of objectives (one figure), plus a 3D view for three.

    Feasible Pareto trials in colour, other feasible trials light blue, infeasible grey.
    """
    go = _go()
    from plotly.subplots import make_subplots

    k = len(data.names)
    vals = np.array(data.values, dtype=float).reshape(-1, k)
    num = np.array(data.numbers)
    feas = np.array(data.feasible, dtype=bool)
    front = np.array(data.on_front, dtype=bool)
    groups = [("Infeasible", ~feas, dict(color=_GREY, size=6)),
              ("Feasible", feas & ~front, dict(color="#9ecae1", size=6)),
              ("Pareto front", front, dict(color="#d62728", size=9,
                                           line=dict(width=1, color="#222")))]
    figs = []
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)] or [(0, 0)]
    fig = make_subplots(rows=1, cols=len(pairs), horizontal_spacing=0.08)
    for c, (i, j) in enumerate(pairs, start=1):
        for name, mask, marker in groups:
            x = vals[mask, i] if k > 1 else num[mask]
            y = vals[mask, j]
            fig.add_trace(go.Scatter(
                x=x, y=y, mode="markers", name=name, marker=marker, legendgroup=name,
                showlegend=c == 1, customdata=num[mask],
                hovertemplate="trial %{customdata}<br>%{x:.4g}, %{y:.4g}<extra>" + name
                              + "</extra>"), row=1, col=c)
        fig.update_xaxes(title_text=_label(data.names[i], data.directions[i]) if k > 1
                         else "trial", row=1, col=c)
        fig.update_yaxes(title_text=_label(data.names[j], data.directions[j]), row=1, col=c)
    fig.update_layout(title="Pareto front (feasible trials; infeasible in grey)",
                      height=430, margin=dict(t=60, l=60, r=20, b=50))
    figs.append(fig)
    if k == 3:
        f3 = go.Figure()
        for name, mask, marker in groups:
            f3.add_trace(go.Scatter3d(
                x=vals[mask, 0], y=vals[mask, 1], z=vals[mask, 2], mode="markers",
                name=name, customdata=num[mask],
                marker=dict(color=marker["color"], size=3 if name != "Pareto front" else 5),
                hovertemplate="trial %{customdata}<extra>" + name + "</extra>"))
        f3.update_layout(title="Pareto front, 3D", height=560, margin=dict(t=50, l=0, r=0, b=0),
                         scene=dict(**{f"{a}axis_title": _label(n, d) for a, n, d in
                                       zip("xyz", data.names, data.directions)}))
        figs.append(f3)
    return figs


def plot_hypervolume(data: HypervolumeData) -> Any:
    go = _go()
    fig = go.Figure(go.Scatter(x=data.numbers, y=data.hypervolume, mode="lines+markers",
                               line_shape="hv", marker=dict(size=4), name="hypervolume"))
    ref = ", ".join(f"{n}={v:.4g}" for n, v in zip(data.names, data.reference_point))
    fig.update_layout(title=f"Hypervolume history (normalised; reference point {ref})",
                      xaxis_title="trial", yaxis_title="hypervolume (fraction of box)",
                      height=380, margin=dict(t=60, l=60, r=20, b=50))
    return fig


def plot_importances(data: ImportanceData) -> Any:
    go = _go()
    from plotly.subplots import make_subplots

    names = list(data.importances) or ["(none)"]
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names,
                        horizontal_spacing=0.18)
    for c, name in enumerate(names, start=1):
        imp = data.importances.get(name, {})
        items = sorted(imp.items(), key=lambda kv: kv[1])
        fig.add_trace(go.Bar(x=[v for _, v in items], y=[k for k, _ in items],
                             orientation="h", name=name, showlegend=False), row=1, col=c)
    note = "; ".join(f"{k}: {v}" for k, v in data.skipped.items())
    used = (f"latest {data.n_trials} of {data.n_complete}" if data.n_complete > data.n_trials
            else str(data.n_trials))
    fig.update_layout(title=f"Parameter importances per objective (PED-ANOVA, {used} "
                            "complete trials)" + (f"<br><sub>{html.escape(note)}</sub>" if note else ""),
                      height=max(320, 60 + 22 * max((len(v) for v in data.importances.values()),
                                                    default=1)),
                      margin=dict(t=80, l=150, r=20, b=40))
    return fig


def plot_parallel(data: ParallelData) -> Any:
    go = _go()
    dims = []
    for col in data.columns:
        d: dict[str, Any] = {"label": col["label"], "values": np.array(col["values"])}
        if "ticktext" in col:
            d["tickvals"] = list(range(len(col["ticktext"])))
            d["ticktext"] = col["ticktext"]
        dims.append(d)
    fig = go.Figure(go.Parcoords(
        dimensions=dims,
        line=dict(color=np.array(data.feasible, dtype=float), cmin=0, cmax=1,
                  colorscale=[[0, _GREY], [1, "#1f77b4"]]),
    ))
    fig.update_layout(title="Parallel coordinates (blue feasible, grey infeasible)",
                      height=460, margin=dict(t=90, l=60, r=60, b=30))
    return fig


_STATUS_COLOURS = {"COMPLETE": "#1f77b4", "INFEASIBLE": _GREY, "PRUNED": "#ff7f0e",
                   "FAIL": "#d62728", "RUNNING": "#2ca02c", "WAITING": "#9467bd"}


def plot_timeline(data: TimelineData) -> Any:
    go = _go()
    fig = go.Figure()
    status = np.array(data.status)
    for s, colour in _STATUS_COLOURS.items():
        idx = np.nonzero(status == s)[0]
        if len(idx) == 0:
            continue
        fig.add_trace(go.Bar(
            y=[data.workers[i] for i in idx], x=[data.seconds[i] * 1000 for i in idx],
            base=[data.start[i] for i in idx], orientation="h", name=s,
            marker_color=colour, customdata=[data.numbers[i] for i in idx],
            hovertemplate="trial %{customdata}<extra>" + s + "</extra>"))
    fig.update_layout(title="Trial timeline by worker", barmode="overlay",
                      xaxis=dict(type="date", title="time"), yaxis_title="worker",
                      height=max(260, 120 + 40 * len(set(data.workers))),
                      margin=dict(t=60, l=120, r=20, b=50))
    return fig


def plot_serving(data: ServingData) -> Any:
    go = _go()
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12, subplot_titles=(
        "cache hit rate over the split (colour)", "throughput over the split (colour)"))
    feas = np.array(data.feasible, dtype=bool)
    for c, (metric, title, scale) in enumerate(
            [("cache_hit_rate", "cache hit rate", "Viridis"),
             ("throughput_rps", "throughput (req/s)", "Plasma")], start=1):
        z = np.array(getattr(data, metric), dtype=float)
        fig.add_trace(go.Scatter(
            x=np.array(data.cache_ratio), y=np.array(data.memory_ratio), mode="markers",
            customdata=np.stack([np.array(data.numbers), z], axis=-1) if len(z) else None,
            marker=dict(color=z, colorscale=scale, size=8,
                        symbol=np.where(feas, "circle", "x"),
                        colorbar=dict(title=title, x=0.44 if c == 1 else 1.0, len=0.9)),
            name=title, showlegend=False,
            hovertemplate="trial %{customdata[0]}<br>β=%{x:.3f} γ=%{y:.3f}<br>"
                          + title + "=%{customdata[1]:.4g}<extra></extra>"), row=1, col=c)
        fig.update_xaxes(title_text="cache share β (serve.cache_ratio)", row=1, col=c)
        fig.update_yaxes(title_text="workspace share γ (serve.memory_ratio)", row=1, col=c)
    fig.update_layout(title="Serving memory split: cache vs workspace (x = infeasible)",
                      height=420, margin=dict(t=80, l=60, r=40, b=50))
    return fig


# --- the page ------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222}
h1{margin-bottom:4px} h2{margin-top:32px;border-bottom:1px solid #ddd}
.meta{color:#555} table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4} table.sortable th{cursor:pointer;user-select:none}
table.sortable th.asc::after{content:" \\25B2"} table.sortable th.desc::after{content:" \\25BC"}
code{font-size:12px;white-space:nowrap} td.params{font-size:11px;max-width:520px}
.kv td:first-child{font-weight:600} .grid{display:flex;gap:32px;flex-wrap:wrap}
.note{color:#777;font-size:13px}
"""

_SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function(table){
  table.querySelectorAll('th').forEach(function(th, col){
    th.addEventListener('click', function(){
      var asc = !th.classList.contains('asc');
      table.querySelectorAll('th').forEach(function(h){h.classList.remove('asc','desc');});
      th.classList.add(asc ? 'asc' : 'desc');
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      rows.sort(function(a, b){
        var x = a.cells[col].getAttribute('data-v'), y = b.cells[col].getAttribute('data-v');
        var nx = parseFloat(x), ny = parseFloat(y), r;
        if (!isNaN(nx) && !isNaN(ny)) r = nx - ny; else r = String(x).localeCompare(String(y));
        return asc ? r : -r;
      });
      rows.forEach(function(r){ body.appendChild(r); });
    });
  });
});
"""


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v)


def _kv_table(d: dict[str, Any]) -> str:
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_fmt(v))}</td></tr>"
                   for k, v in d.items())
    return f'<table class="kv">{rows}</table>' if rows else '<p class="note">(none stored)</p>'


def _pareto_table_html(t: TableData) -> str:
    if not t.rows:
        return '<p class="note">(no feasible trials)</p>'
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t.columns)
    body = []
    for r in t.rows:
        cells = []
        for c in t.columns:
            v = r.get(c)
            if c == "params":
                text = " ".join(f"{k}={_fmt(x)}" for k, x in v.items())
                cells.append(f'<td class="params" data-v="{html.escape(text)}">'
                             f"{html.escape(text)}</td>")
            elif c == "export":
                cells.append(f'<td data-v=""><code>{html.escape(v)}</code></td>')
            else:
                dv = "" if v is None else repr(float(v)) if isinstance(v, (int, float)) else v
                text = f"{v:.1f}x" if c == "smaller" and v else _fmt(v)
                cells.append(f'<td data-v="{html.escape(str(dv))}">{html.escape(text)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table class="sortable" id="pareto-table"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


@dataclass
class Report:
    """Everything the page shows, as data, plus the seconds each part took."""

    context: ContextData
    pareto: ParetoData
    hypervolume: HypervolumeData
    importances: ImportanceData
    parallel: ParallelData
    timeline: TimelineData
    serving: ServingData
    table: TableData
    sensitivity: SensitivityData = field(default_factory=SensitivityData)
    timings: dict[str, float] = field(default_factory=dict)


def build_report(study: optuna.Study, storage_url: str | None = None) -> Report:
    """Collect all the report's data (no drawing)."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    trials = read_trials(study)
    timings["load"] = time.perf_counter() - t0

    def timed(name: str, fn: Any, *a: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        out = fn(*a, **kw)
        timings[name] = time.perf_counter() - t
        return out

    pareto = timed("pareto", collect_pareto, study, trials)
    return Report(
        context=timed("context", collect_context, study, trials, storage_url),
        pareto=pareto,
        hypervolume=timed("hypervolume", collect_hypervolume, study, trials),
        importances=timed("importances", collect_importances, study, trials),
        parallel=timed("parallel", collect_parallel, study, trials),
        timeline=timed("timeline", collect_timeline, study, trials),
        serving=timed("serving", collect_serving, study, trials),
        table=timed("table", collect_pareto_table, study, trials, storage_url, pareto),
        sensitivity=timed("sensitivity", collect_sensitivity, study, trials),
        timings=timings,
    )


def _figure_div(fig: Any, div_id: str) -> str:
    import plotly.io as pio

    return pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id=div_id,
                       config={"displaylogo": False, "responsive": True},
                       default_height=f"{fig.layout.height or 450}px")


def render_html(rep: Report) -> str:
    """The report page: plotly.js inline, no external resource."""
    from plotly.offline import get_plotlyjs

    ctx = rep.context
    sections: list[str] = []

    def section(title: str, body: str) -> None:
        sections.append(f"<h2>{html.escape(title)}</h2>\n{body}")

    n_multi = len(rep.pareto.names) > 1
    if rep.pareto.numbers:
        figs = plot_pareto(rep.pareto)
        section("Pareto front", "\n".join(_figure_div(f, f"fig-pareto-{i}")
                                          for i, f in enumerate(figs)))
    else:
        section("Pareto front", '<p class="note">(no complete trials yet)</p>')
    section(f"Pareto trials ({len(rep.table.rows)})",
            '<p class="note">Click a column to sort. The export command writes the '
            "trial's model.safetensors and csearch.json.</p>" + _pareto_table_html(rep.table))
    if n_multi and rep.hypervolume.numbers:
        section("Hypervolume history", _figure_div(plot_hypervolume(rep.hypervolume),
                                                   "fig-hypervolume"))
    section("Parameter importances", _figure_div(plot_importances(rep.importances),
                                                 "fig-importances"))
    if rep.parallel.numbers:
        section("Parallel coordinates", _figure_div(plot_parallel(rep.parallel),
                                                    "fig-parallel"))
    if rep.timeline.numbers:
        section("Timeline", _figure_div(plot_timeline(rep.timeline), "fig-timeline"))
    if rep.serving.numbers:
        section("Cache and throughput against the memory split",
                _figure_div(plot_serving(rep.serving), "fig-serving"))
    if rep.sensitivity.groups:
        section("Layer-group sensitivity", _figure_div(plot_sensitivity(rep.sensitivity),
                                                       "fig-sensitivity"))
    env = dict(ctx.environment)
    section("Baseline and environment",
            '<div class="grid"><div><h3>Baseline (uncompressed model)</h3>'
            f"{_kv_table(ctx.baseline)}</div><div><h3>Environment</h3>{_kv_table(env)}</div>"
            f"<div><h3>Spec</h3>{_kv_table(ctx.spec)}</div></div>")
    states = ", ".join(f"{k} {v}" for k, v in sorted(ctx.states.items()))
    meta = (f"{ctx.n_trials} trials ({states}); {ctx.n_feasible} feasible and "
            f"{ctx.n_infeasible} infeasible complete; {len(rep.table.rows)} on the Pareto "
            f"front; objectives: "
            + ", ".join(_label(n, d) for n, d in zip(rep.pareto.names, rep.pareto.directions))
            + (f"; storage {html.escape(ctx.storage)}" if ctx.storage else "")
            + f"; generated {datetime.now().strftime('%Y-%m-%d %H:%M')}")
    title = f"csearch report: {ctx.study}"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style>"
        f"<script type=\"text/javascript\">{get_plotlyjs()}</script></head><body>"
        f"<h1>{html.escape(title)}</h1><p class=\"meta\">{html.escape(meta)}</p>\n"
        + "\n".join(sections)
        + f"\n<script type=\"text/javascript\">{_SORT_JS}</script>"
        + "<script type=\"application/json\" id=\"csearch-timings\">"
        + json.dumps({k: round(v, 4) for k, v in rep.timings.items()})
        + "</script></body></html>\n"
    )


def write_report(study: optuna.Study, path: str | Path, storage_url: str | None = None
                 ) -> Report:
    """Write the self-contained HTML report of `study` to `path`; return its data."""
    rep = build_report(study, storage_url)
    t = time.perf_counter()
    page = render_html(rep)
    rep.timings["render"] = time.perf_counter() - t
    out = Path(path)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return rep


def as_dict(obj: Any) -> Any:
    """A collected dataclass as JSON-ready data."""
    return asdict(obj)
