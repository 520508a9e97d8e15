"""The report page: one self-contained HTML file with plotly inline, no network.

Trials are read from the storage once (`storage.read_trials`, the same trials as
`get_trials(deepcopy=False)`, read without Optuna's ORM on RDB storages) and every
collector works on that list, so a study of 10,000 trials reports in seconds.
"""

from __future__ import annotations

import html
import json
import math
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna

from ..storage import read_trials
from .data import (
    HypervolumeData,
    ImportanceData,
    ParallelData,
    ParetoData,
    ServingData,
    TimelineData,
    collect_hypervolume,
    collect_importances,
    collect_parallel,
    collect_pareto,
    collect_serving,
    collect_timeline,
)
from .figures import (
    axis_label,
    plot_hypervolume,
    plot_importances,
    plot_parallel,
    plot_pareto,
    plot_sensitivity,
    plot_serving,
    plot_timeline,
)
from .memory import MemorySplitData, collect_memory_split, plot_memory_split
from .served import ServedData, collect_served, plot_served
from .tables import (
    ContextData,
    SensitivityData,
    TableData,
    collect_context,
    collect_pareto_table,
    collect_sensitivity,
)

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
                text = " ".join(f"{k}={_fmt(x)}" for k, x in v.items()) or "(defaults)"
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
    served: ServedData = field(default_factory=ServedData)
    memory: MemorySplitData = field(default_factory=MemorySplitData)
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
        served=timed("served", collect_served, study, trials),
        memory=timed("memory", collect_memory_split, study, trials, pareto),
        timings=timings,
    )


def _served_table(d: ServedData) -> str:
    head = ("<tr><th>#</th>" + "".join(f"<th>{k} replay</th><th>{k} served</th>"
                                       for k in d.predicted)
            + f"<th>{d.rate} replay</th><th>{d.rate} served</th><th>errors</th>"
            "<th>server</th></tr>")
    rows = []
    for i, n in enumerate(d.numbers):
        cells = [str(n)]
        for k in d.predicted:
            cells += [_fmt(d.predicted[k][i]), _fmt(d.served[k][i])]
        cells += [_fmt(d.predicted_rps[i]), _fmt(d.served_rps[i]), str(d.errors[i]),
                  html.escape(d.urls[i])]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def _server_bound_note(d: ServingData) -> str:
    if not d.server_bound:
        return ""
    cap = 1e3 / (d.serve_overhead_ms or 1.0)
    return ('<p class="note">Server-bound: the server spends '
            f"{d.serve_overhead_ms:.2f} ms on every request (<code>serve_overhead_ms</code>), "
            f"which caps it at {cap:.0f} requests/s, and in every trial's replay that front "
            "end was busier than the model (<code>frontend_busy_share</code> above "
            "<code>model_busy_share</code>). Latency here is the server's, whatever the "
            "model; compare models by <code>model_latency_ms</code> and <code>speedup</code>.</p>")


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
                _server_bound_note(rep.serving)
                + _figure_div(plot_serving(rep.serving), "fig-serving"))
    if rep.memory.numbers:
        section("Memory split of the Pareto trials",
                '<p class="note">Packed weights, the KV-cache block pool '
                "(S_cache = budget &times; serve.cache_ratio) and the activation workspace "
                "(S_mem = budget &times; serve.memory_ratio) of each feasible Pareto trial; "
                "hover for its accuracy, tokens/s and running sequences.</p>"
                + _figure_div(plot_memory_split(rep.memory), "fig-memory"))
    if rep.served.numbers:
        section("Predicted against served",
                '<p class="note">Trials measured on a real server with '
                "<code>csearch loadtest --trial N</code>.</p>"
                + _figure_div(plot_served(rep.served), "fig-served")
                + _served_table(rep.served))
    if rep.sensitivity.groups:
        section("Layer-group sensitivity", _figure_div(plot_sensitivity(rep.sensitivity),
                                                       "fig-sensitivity"))
    env = dict(ctx.environment)
    section("Baseline and environment",
            '<div class="grid"><div><h3>Baseline (uncompressed model)</h3>'
            f"{_kv_table(ctx.baseline)}</div><div><h3>Environment</h3>{_kv_table(env)}</div>"
            + (f"<div><h3>Study start (seconds)</h3>{_kv_table(ctx.start_seconds)}</div>"
               if ctx.start_seconds else "") +
            f"<div><h3>Spec</h3>{_kv_table(ctx.spec)}</div></div>")
    states = ", ".join(f"{k} {v}" for k, v in sorted(ctx.states.items()))
    meta = (f"{ctx.n_trials} trials ({states}); {ctx.n_feasible} feasible and "
            f"{ctx.n_infeasible} infeasible complete; {len(rep.table.rows)} on the Pareto "
            f"front; {ctx.early_stop_line()}; objectives: "
            + ", ".join(axis_label(n, d) for n, d in zip(rep.pareto.names, rep.pareto.directions))
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
