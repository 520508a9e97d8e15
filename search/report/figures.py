"""The report's figures: each `plot_*` turns collected data into a plotly figure."""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from ._common import _GREY
from .data import (
    HypervolumeData,
    ImportanceData,
    ParallelData,
    ParetoData,
    ServingData,
    TimelineData,
)
from .tables import SensitivityData


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


_SEEDED = "Seeded (enqueued)"
_SEED_MARKER = dict(symbol="diamond-open", size=14, color="#222", line=dict(width=2))


def _go() -> Any:
    import plotly.graph_objects as go

    return go


def axis_label(name: str, direction: str) -> str:
    return f"{name} ({'max' if direction == 'maximize' else 'min'})"


def plot_pareto(data: ParetoData) -> list[Any]:
    """2D scatter of every pair of objectives (one figure), plus a 3D view for three.

    Feasible Pareto trials in colour, other feasible trials light blue, infeasible grey;
    seeded (enqueued) trials are ringed by an open diamond, so what the search added
    stands apart from its starting points.
    """
    go = _go()
    from plotly.subplots import make_subplots

    k = len(data.names)
    vals = np.array(data.values, dtype=float).reshape(-1, k)
    num = np.array(data.numbers)
    feas = np.array(data.feasible, dtype=bool)
    front = np.array(data.on_front, dtype=bool)
    seeded = np.array(data.seeded or [False] * len(num), dtype=bool)
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
        if seeded.any():
            fig.add_trace(go.Scatter(
                x=vals[seeded, i] if k > 1 else num[seeded], y=vals[seeded, j],
                mode="markers", name=_SEEDED, legendgroup=_SEEDED, showlegend=c == 1,
                marker=_SEED_MARKER, customdata=num[seeded],
                hovertemplate="trial %{customdata} (seeded)<br>%{x:.4g}, %{y:.4g}<extra>"
                              "</extra>"), row=1, col=c)
        fig.update_xaxes(title_text=axis_label(data.names[i], data.directions[i]) if k > 1
                         else "trial", row=1, col=c)
        fig.update_yaxes(title_text=axis_label(data.names[j], data.directions[j]), row=1, col=c)
    n_search = len(data.front_from_search())
    fig.update_layout(title="Pareto front (feasible trials; infeasible in grey; "
                            f"{n_search} of {int(front.sum())} front trials found by the "
                            "search, seeded trials ringed)",
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
        if seeded.any():
            f3.add_trace(go.Scatter3d(
                x=vals[seeded, 0], y=vals[seeded, 1], z=vals[seeded, 2], mode="markers",
                name=_SEEDED, customdata=num[seeded],
                marker=dict(symbol="diamond-open", size=7, color="#222"),
                hovertemplate="trial %{customdata} (seeded)<extra></extra>"))
        f3.update_layout(title="Pareto front, 3D", height=560, margin=dict(t=50, l=0, r=0, b=0),
                         scene=dict(**{f"{a}axis_title": axis_label(n, d) for a, n, d in
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
    sub = f"<br><sub>{html.escape(note)}</sub>" if note else ""
    fig.update_layout(title=f"Parameter importances per objective (PED-ANOVA, {used} "
                            "complete trials)" + sub,
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
