"""Predicted against served latency: what the replay said and what a real server did.

A trial gets a `served` user attr from `csearch loadtest --trial N`; the report puts its
measured mean, p50 and p99 beside the replay's figures for the same trial.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from .. import attrs
from ._common import Trials, _trials

__all__ = ["ServedData", "collect_served", "plot_served"]

# (label, replay metric, loadtest key)
_PAIRS = (("mean", "latency_mean_ms", "mean_ms"),
          ("p50", "latency_ms", "p50_ms"),
          ("p99", "latency_p99_ms", "p99_ms"))


@dataclass
class ServedData:
    """One row per trial that has a `served` measurement; `None` where a figure is missing."""

    numbers: list[int] = field(default_factory=list)
    predicted: dict[str, list[float | None]] = field(default_factory=dict)
    served: dict[str, list[float | None]] = field(default_factory=dict)
    predicted_rps: list[float | None] = field(default_factory=list)
    served_rps: list[float | None] = field(default_factory=list)
    errors: list[int] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)


def _num(d: dict[str, Any], key: str) -> float | None:
    v = d.get(key)
    return float(v) if isinstance(v, (int, float)) else None


def collect_served(study: optuna.Study, trials: Trials | None = None) -> ServedData:
    data = ServedData(predicted={k: [] for k, _, _ in _PAIRS},
                      served={k: [] for k, _, _ in _PAIRS})
    for t in _trials(study, trials):
        served = t.user_attrs.get(attrs.SERVED)
        if t.state != TrialState.COMPLETE or not isinstance(served, dict):
            continue
        metrics = t.user_attrs.get(attrs.METRICS) or {}
        data.numbers.append(t.number)
        for label, metric, key in _PAIRS:
            data.predicted[label].append(_num(metrics, metric))
            data.served[label].append(_num(served, key))
        data.predicted_rps.append(_num(metrics, "throughput_rps"))
        data.served_rps.append(_num(served, "throughput_rps"))
        data.errors.append(int(served.get("errors") or 0))
        data.urls.append(str(served.get("url", "")))
    return data


def plot_served(data: ServedData) -> Any:
    """Served against predicted latency per trial, log axes, with the y = x line."""
    import plotly.graph_objects as go

    fig = go.Figure()
    lo, hi = float("inf"), 0.0
    for label, symbol in (("mean", "circle"), ("p50", "square"), ("p99", "diamond")):
        pts = [(n, p, s) for n, p, s in zip(data.numbers, data.predicted[label],
                                            data.served[label])
               if p is not None and s is not None and p > 0 and s > 0]
        if not pts:
            continue
        lo = min(lo, *(min(p, s) for _, p, s in pts))
        hi = max(hi, *(max(p, s) for _, p, s in pts))
        fig.add_trace(go.Scatter(
            x=[p for _, p, _ in pts], y=[s for _, _, s in pts], mode="markers+text",
            text=[f"#{n}" for n, _, _ in pts], textposition="top center",
            marker=dict(symbol=symbol, size=9), name=label,
            hovertemplate="trial %{text}<br>replay %{x:.4g} ms<br>served %{y:.4g} ms"
                          "<extra>" + label + "</extra>"))
    if hi > 0:
        fig.add_trace(go.Scatter(x=[lo / 2, hi * 2], y=[lo / 2, hi * 2], mode="lines",
                                 line=dict(dash="dot", color="#999"), name="served = replay"))
    fig.update_xaxes(type="log", title_text="replay latency (ms)")
    fig.update_yaxes(type="log", title_text="served latency (ms, csearch loadtest)")
    fig.update_layout(title="Predicted (serve replay) against served (real server) latency",
                      height=440, margin=dict(t=60, l=70, r=20, b=50))
    return fig
