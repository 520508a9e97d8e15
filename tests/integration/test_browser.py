"""Headless Chromium renders the report (file://) and the dashboard: plots drawn, no
JavaScript errors, nothing fetched from the network, infeasible trials kept off the front.

Skipped where Chromium is absent (failed instead under .ci/run, which installs it).
"""

from __future__ import annotations

import json

import pytest
from cdp import Browser, find_chromium
from conftest import missing_service
from dashboard_fixtures import STUDY, csearch, dashboard, get_json, real_study  # noqa: F401

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

PLOTS = ('Array.from(document.querySelectorAll(".js-plotly-plot"))'
         '.filter(e => e.querySelector("svg.main-svg")).map(e => e.id)')


@pytest.fixture(scope="module")
def browser():
    exe = find_chromium()
    if exe is None:
        missing_service("Chromium (apt-get install chromium)")
    b = Browser(exe, timeout=90)
    try:
        yield b
    finally:
        b.close()


def _rows(url: str) -> tuple[list[dict], list[int]]:
    """(complete trial rows, feasible Pareto numbers) as `csearch trials/pareto` give them."""
    import optuna

    from search.results import pareto_rows, trial_rows
    from search.storage import open_storage

    study = optuna.load_study(study_name=STUDY,
                              storage=open_storage(url, create=False, heartbeat=False))
    rows = [t for t in trial_rows(study) if t["state"] == "COMPLETE"]
    return rows, sorted(r["number"] for r in pareto_rows(study))


def test_report_renders_offline(browser, real_study, tmp_path):
    url, _ = real_study
    out = tmp_path / "report.html"
    r = csearch("report", "--study", STUDY, "--storage", url, "-o", str(out))
    assert r.returncode == 0, r.stderr
    browser.events.clear()
    browser.open(out.as_uri())
    ids = browser.wait_for(f'document.readyState === "complete" && {PLOTS}.length >= 6 '
                           f"&& {PLOTS}", timeout=90)
    browser.pump(1.0)
    assert ids and len(ids) >= 4, ids
    assert {"fig-pareto-0", "fig-hypervolume", "fig-parallel", "fig-timeline"} <= set(ids)
    assert browser.errors() == []
    assert browser.requests_outside(("file://", "data:", "blob:")) == []

    # The 2D Pareto plot greys exactly the infeasible trials and marks the feasible front.
    traces = browser.eval('JSON.stringify(document.getElementById("fig-pareto-0")._fullData'
                          '.filter(d => d.xaxis === "x")'
                          '.map(d => [d.name, Array.from(d.customdata || [])]))')
    by_name = {n: sorted(int(c) for c in cd) for n, cd in json.loads(traces)}
    rows, pareto = _rows(url)
    assert by_name["Infeasible"] == sorted(t["number"] for t in rows if t["feasible"] is False)
    assert by_name["Pareto front"] == pareto

    # The table sorts by a clicked column.
    order = browser.eval("""(() => {
        const t = document.getElementById("pareto-table");
        const col = Array.from(t.tHead.rows[0].cells)
            .findIndex(c => c.innerText.trim() == "size_mb");
        t.tHead.rows[0].cells[col].click();
        return Array.from(t.tBodies[0].rows).map(r => parseFloat(r.cells[col].dataset.v));
    })()""")
    assert order == sorted(order) and len(order) == len(pareto)


def test_dashboard_renders_with_feasible_front(browser, dashboard, real_study):
    url, _ = real_study
    sid = next(s["study_id"] for s in get_json(dashboard + "/api/studies")["study_summaries"]
               if s["study_name"] == STUDY)
    browser.events.clear()
    browser.open(f"{dashboard}/dashboard/studies/{sid}")
    ids = browser.wait_for(f'{PLOTS}.includes("graph-pareto-front") && '
                           f'{PLOTS}.includes("plot-history") && {PLOTS}', timeout=90)
    browser.pump(1.0)
    assert ids and "graph-pareto-front" in ids, ids
    assert browser.errors() == []
    assert browser.requests_outside((dashboard, "data:", "blob:")) == []
    # The dashboard's Pareto plot: its traces, by hover label, with their point counts.
    traces = json.loads(browser.eval(
        'JSON.stringify(document.getElementById("graph-pareto-front").data'
        '.map(d => [d.hovertemplate, (d.x || []).length]))'))
    counts: dict[str, int] = {}
    for tmpl, n in traces:
        label = tmpl.split("<extra>")[-1].split("</extra>")[0]
        counts[label] = counts.get(label, 0) + n
    rows, pareto = _rows(url)
    assert counts.get("Infeasible Trial", 0) == sum(t["feasible"] is False for t in rows)
    assert counts.get("Best Trial", 0) == len(pareto)
