"""Where each Pareto trial of a language-model study puts its memory budget: packed
weights, the KV-cache block pool (S_cache) and the activation workspace (S_mem).

Shown for studies whose trials ran the generation replay (they carry `throughput_tps`).
The split is read from the trial's metrics (`size_mb`, `kv_cache_mb`, `workspace_mb`);
trials stored before those metrics existed fall back to the budget times their sampled
`serve.cache_ratio` / `serve.memory_ratio`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from .. import attrs
from ._common import Trials, _trials
from .data import ParetoData, collect_pareto

__all__ = ["MemorySplitData", "collect_memory_split", "plot_memory_split"]


@dataclass
class MemorySplitData:
    """One entry per feasible Pareto trial of an LM study, in MB."""

    budget_mb: float | None = None
    numbers: list[int] = field(default_factory=list)
    weights_mb: list[float] = field(default_factory=list)
    kv_cache_mb: list[float] = field(default_factory=list)
    workspace_mb: list[float] = field(default_factory=list)
    throughput_tps: list[float] = field(default_factory=list)
    max_running: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)


def _split(t: FrozenTrial, budget: float | None) -> tuple[float, float, float] | None:
    m = t.user_attrs.get(attrs.METRICS) or {}
    weights = m.get("size_mb")
    kv, ws = m.get("kv_cache_mb"), m.get("workspace_mb")
    if (kv is None or ws is None) and budget is not None:
        beta, gamma = t.params.get("serve.cache_ratio"), t.params.get("serve.memory_ratio")
        if beta is not None and gamma is not None:
            kv, ws = budget * float(beta), budget * float(gamma)
    if None in (weights, kv, ws):
        return None
    return float(weights), float(kv), float(ws)


def collect_memory_split(study: optuna.Study, trials: Trials | None = None,
                         pareto: ParetoData | None = None) -> MemorySplitData:
    trials = _trials(study, trials)
    pareto = pareto or collect_pareto(study, trials)
    baseline = study.user_attrs.get(attrs.BASELINE) or {}
    budget = baseline.get("memory_budget_mb")
    data = MemorySplitData(budget_mb=float(budget) if budget is not None else None)
    by_number = {t.number: t for t in trials}
    for n in sorted(pareto.front_numbers()):
        t = by_number[n]
        m = t.user_attrs.get(attrs.METRICS) or {}
        split = _split(t, data.budget_mb)
        if "throughput_tps" not in m or split is None:
            continue
        data.numbers.append(n)
        data.weights_mb.append(split[0])
        data.kv_cache_mb.append(split[1])
        data.workspace_mb.append(split[2])
        data.throughput_tps.append(float(m["throughput_tps"]))
        data.max_running.append(float(m.get("max_running", float("nan"))))
        data.accuracy.append(float(m.get("accuracy", float("nan"))))
    return data


def plot_memory_split(data: MemorySplitData) -> Any:
    """Stacked bars per Pareto trial (weights, KV cache, workspace) against the budget."""
    import plotly.graph_objects as go

    labels = [f"#{n}" for n in data.numbers]
    hover = [f"accuracy {a:.4f}<br>{tps:.4g} tokens/s<br>{int(r) if r == r else '?'} running"
             for a, tps, r in zip(data.accuracy, data.throughput_tps, data.max_running)]
    fig = go.Figure()
    for name, values, color in (("weights (packed)", data.weights_mb, "#4c78a8"),
                                ("KV cache (S_cache)", data.kv_cache_mb, "#f58518"),
                                ("workspace (S_mem)", data.workspace_mb, "#54a24b")):
        fig.add_bar(name=name, x=labels, y=values, marker_color=color, customdata=hover,
                    hovertemplate="%{x}: %{y:.3f} MB<br>%{customdata}<extra>" + name
                                  + "</extra>")
    if data.budget_mb is not None:
        fig.add_hline(y=data.budget_mb, line_dash="dash",
                      annotation_text=f"budget {data.budget_mb:g} MB")
    fig.update_layout(barmode="stack", height=420, xaxis_title="Pareto trial",
                      yaxis_title="MB", title="Memory split of the Pareto trials: weights, "
                      "KV cache, workspace")
    return fig
