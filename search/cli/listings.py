"""Listing commands: studies, trials, pareto, workloads, spaces."""

from __future__ import annotations

import json

import click

from .group import cli
from .options import format_option, open_target, storage_option, study_option
from .tables import feas, fmt_value, pareto_table, params_text, table, table_width

@cli.command()
@storage_option
@format_option
def studies(storage: str | None, fmt: str) -> None:
    """List studies with trial counts by state and best values."""
    from ..results import study_summaries

    rows = study_summaries(open_target(storage))
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    body = []
    for r in rows:
        states = " ".join(f"{k}={v}" for k, v in sorted(r["states"].items()))
        best = " ".join(f"{k}={fmt_value(v)}" for k, v in r["best"].items())
        body.append([r["name"], r["workload"] or "-", f"{r['trials']}/{r['budget']}", states,
                      r["pareto_size"], best])
    click.echo(table(["study", "workload", "trials/budget", "states", "pareto", "best"], body))


@cli.command()
@study_option
@storage_option
@format_option
@click.option("--state", "states", multiple=True,
              type=click.Choice(["COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"]),
              help="Only trials in these states.")
@click.option("--params", "full", is_flag=True,
              help="Every parameter with its full name (lines may get wide). Default: the "
                   "ones that differ from what leaving them out means, shortened to fit.")
def trials(study_name: str, storage: str | None, fmt: str, states: tuple[str, ...],
           full: bool) -> None:
    """List a study's trials with params, metrics, values and feasibility."""
    from ..results import trial_rows

    study = open_target(storage, study_name)
    rows = [r for r in trial_rows(study) if not states or r["state"] in states]
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    names = study.metric_names or []
    headers = ["#", "state", "feasible", *names, "seconds", "params", "reason"]
    body = [[r["number"], r["state"] + (" (stale)" if r.get("stale") else ""), feas(r["feasible"]),
             *[fmt_value(v) for v in (r["values"] or [None] * len(names))],
             fmt_value(r["duration_s"]), params_text(r["params"], full), r.get("reason", "")]
            for r in rows]
    if not any(r.get("reason") for r in rows):
        headers.pop()
        body = [b[:-1] for b in body]
    # Where each trial ran, when that differs between trials (workers on several GPUs).
    where = [_where(r) for r in rows]
    if len(set(where) - {""}) > 1:
        headers.insert(3, "device")
        for b, w in zip(body, where):
            b.insert(3, w)
    click.echo(table(headers, body, None if full else table_width(),
                     shrink=(("reason", 12), ("params", 12))))


def _where(row: dict) -> str:
    """`gpu 1` for a worker placed on GPU 1, else the torch device (`cpu`, `cuda:0`)."""
    if row.get("gpu") is not None:
        return f"gpu {row['gpu']}"
    return row.get("device") or ""


@cli.command()
@study_option
@storage_option
@format_option
@click.option("--params", "full", is_flag=True,
              help="Every parameter with its full name (lines may get wide). Default: the "
                   "ones that differ from what leaving them out means, shortened to fit.")
def pareto(study_name: str, storage: str | None, fmt: str, full: bool) -> None:
    """The feasible Pareto front (infeasible trials are never on it)."""
    from ..results import pareto_rows

    study = open_target(storage, study_name)
    rows = pareto_rows(study)
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(pareto_table(rows, study.metric_names or [], study.user_attrs.get("baseline"),
                            full))


@cli.command()
@format_option
def workloads(fmt: str) -> None:
    """List built-in and installed workloads."""
    from objectives import list_workloads

    rows = list_workloads()
    if fmt == "json":
        click.echo(json.dumps([{"name": k, "description": v} for k, v in rows.items()], indent=2))
        return
    click.echo(table(["workload", "description"], [[k, v] for k, v in rows.items()]))


@cli.command()
@format_option
def spaces(fmt: str) -> None:
    """List built-in search spaces and their parameters, and what a parameter a space
    leaves out means (nothing: it leaves the model as it is)."""
    from spaces import OMITTED, builtin_spaces, load_space

    out = []
    for name in builtin_spaces():
        sp = load_space(name)
        out.append({"name": name, "params": {p.name: p.describe() for p in sp.params}})
    if fmt == "json":
        click.echo(json.dumps(out, indent=2))
        return
    body = []
    for s in out:
        for i, (k, v) in enumerate(s["params"].items()):
            body.append([s["name"] if i == 0 else "", k, v])
    click.echo(table(["space", "parameter", "values"], body))
    click.echo("\nA parameter a space leaves out takes its default, which changes nothing:")
    click.echo(table(["left out", "means"], [[k, v] for k, v in OMITTED.items()]))
