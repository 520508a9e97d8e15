"""Predicted against served: what the replay said and what a real server did.

A trial gets a `served` user attr from `csearch loadtest --trial N`; the report puts its
measured figures beside the replay's for the same trial: mean, p50 and p99 latency and
requests/s for classifiers; time to first token, time per output token, end-to-end p50
and generated tokens/s for language models (a `served` attr with `throughput_tps`).
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
_LM_PAIRS = (("TTFT p50", "ttft_ms", "ttft_p50_ms"),
             ("TPOT p50", "tpot_ms", "tpot_p50_ms"),
             ("e2e p50", "latency_ms", "p50_ms"))
# (label, replay metric, loadtest key) of the rate
_RPS = ("requests/s", "throughput_rps", "throughput_rps")
_TPS = ("tokens/s", "throughput_tps", "throughput_tps")


@dataclass
class ServedData:
    """One row per trial that has a `served` measurement; `None` where a figure is missing."""

    numbers: list[int] = field(default_factory=list)
    predicted: dict[str, list[float | None]] = field(default_factory=dict)
    served: dict[str, list[float | None]] = field(default_factory=dict)
    rate: str = _RPS[0]  # what the rate columns count: requests/s, or tokens/s for LMs
    predicted_rps: list[float | None] = field(default_factory=list)
    served_rps: list[float | None] = field(default_factory=list)
    errors: list[int] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)


def _num(d: dict[str, Any], key: str) -> float | None:
    v = d.get(key)
    return float(v) if isinstance(v, (int, float)) else None


def collect_served(study: optuna.Study, trials: Trials | None = None) -> ServedData:
    rows = [t for t in _trials(study, trials) if t.state == TrialState.COMPLETE
            and isinstance(t.user_attrs.get(attrs.SERVED), dict)]
    lm = any("throughput_tps" in t.user_attrs[attrs.SERVED] for t in rows)
    pairs, rate = (_LM_PAIRS, _TPS) if lm else (_PAIRS, _RPS)
    data = ServedData(predicted={k: [] for k, _, _ in pairs},
                      served={k: [] for k, _, _ in pairs}, rate=rate[0])
    for t in rows:
        served = t.user_attrs[attrs.SERVED]
        metrics = t.user_attrs.get(attrs.METRICS) or {}
        data.numbers.append(t.number)
        for label, metric, key in pairs:
            data.predicted[label].append(_num(metrics, metric))
            data.served[label].append(_num(served, key))
        data.predicted_rps.append(_num(metrics, rate[1]))
        data.served_rps.append(_num(served, rate[2]))
        data.errors.append(int(served.get("errors") or 0))
        data.urls.append(str(served.get("url", "")))
    return data


def plot_served(data: ServedData) -> Any:
    """Served against predicted per trial, log axes, with the y = x line: latencies on the
    left, the rate (requests/s, or tokens/s for language models) on the right."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, column_widths=[0.6, 0.4],
                        subplot_titles=("latency (ms)", data.rate))
    symbols = ("circle", "square", "diamond")
    series = [(label, data.predicted[label], data.served[label], symbol, 1, "ms")
              for label, symbol in zip(data.predicted, symbols)]
    series.append((data.rate, data.predicted_rps, data.served_rps, "star", 2, data.rate))
    bounds: dict[int, tuple[float, float]] = {}
    for label, predicted, served, symbol, col, unit in series:
        pts = [(n, p, s) for n, p, s in zip(data.numbers, predicted, served)
               if p is not None and s is not None and p > 0 and s > 0]
        if not pts:
            continue
        lo, hi = bounds.get(col, (float("inf"), 0.0))
        bounds[col] = (min(lo, *(min(p, s) for _, p, s in pts)),
                       max(hi, *(max(p, s) for _, p, s in pts)))
        fig.add_trace(go.Scatter(
            x=[p for _, p, _ in pts], y=[s for _, _, s in pts], mode="markers+text",
            text=[f"#{n}" for n, _, _ in pts], textposition="top center",
            marker=dict(symbol=symbol, size=9), name=label,
            hovertemplate="trial %{text}<br>replay %{x:.4g} " + unit + "<br>served %{y:.4g} "
                          + unit + "<extra>" + label + "</extra>"), row=1, col=col)
    for col, (lo, hi) in bounds.items():
        fig.add_trace(go.Scatter(x=[lo / 2, hi * 2], y=[lo / 2, hi * 2], mode="lines",
                                 line=dict(dash="dot", color="#999"), name="served = replay",
                                 showlegend=col == 1), row=1, col=col)
    for col in (1, 2):
        fig.update_xaxes(type="log", title_text="replay (serve replay)", row=1, col=col)
        fig.update_yaxes(type="log", title_text="served (csearch loadtest)", row=1, col=col)
    fig.update_layout(title="Predicted (serve replay) against served (real server)",
                      height=440, margin=dict(t=70, l=70, r=20, b=50))
    return fig
