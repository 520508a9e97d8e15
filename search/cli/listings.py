"""Listing commands: studies, trials, pareto, workloads, spaces."""

from __future__ import annotations

import json

import click

from .group import cli
from .options import format_option, open_target, storage_option, study_option
from .tables import (broken_text, feas, fmt_value, pareto_table, params_text, study_groups,
                     table, table_width, with_split)

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
    groups = study_groups(study)
    headers = ["#", "state", "feasible", *names, "seconds", "params", "reason"]
    # Why a trial failed, was stopped, or is infeasible (which constraint, by how much).
    body = [[r["number"], r["state"] + (" (stale)" if r.get("stale") else ""), feas(r["feasible"]),
             *[fmt_value(v) for v in (r["values"] or [None] * len(names))],
             fmt_value(r["duration_s"]),
             params_text(r["params"], full, groups, split=r.get("serve_split")),
             r.get("reason") or broken_text(r, short=True)]
            for r in rows]
    if not any(b[-1] for b in body):
        headers.pop()
        body = [b[:-1] for b in body]
    # Where each trial ran, when that differs between trials (workers on several GPUs).
    where = [_where(r) for r in rows]
    if len(set(where) - {""}) > 1:
        headers.insert(3, "device")
        for b, w in zip(body, where):
            b.insert(3, w)
    click.echo(table(headers, body, None if full else table_width(),
                     shrink=(("params", 12), ("reason", 12))))


def _where(row: dict) -> str:
    """`gpu 1` for a worker placed on GPU 1, else the torch device (`cpu`, `cuda:0`)."""
    if row.get("gpu") is not None:
        return f"gpu {row['gpu']}"
    return row.get("device") or ""


@cli.command()
@study_option
@storage_option
@format_option
@click.option("--trial", "number", type=int, required=True, help="Trial number.")
def show(study_name: str, storage: str | None, fmt: str, number: int) -> None:
    """One trial: objective values, constraints (which are broken, by how much), params
    and every metric; as Optuna's `best-trial` shows one trial."""
    from ..results import trial_detail

    d = trial_detail(open_target(storage, study_name), number)
    if fmt == "json":
        click.echo(json.dumps(d, indent=2))
        return
    feasible = {True: "feasible", False: "INFEASIBLE", None: "no feasibility"}[d["feasible"]]
    head = f"trial {d['number']} of study {study_name!r}: {d['state']}, {feasible}"
    why = d.get("reason") or broken_text(d)
    click.echo(head + (f"; {why}" if why else ""))
    sections = [
        ("objective", "value", [[k, fmt_value(v)] for k, v in d["objectives"].items()]),
        ("constraint", "check", [[c["constraint"], _check(c)] for c in d["constraint_checks"]]),
        ("parameter", "value", [[k, fmt_value(v)] for k, v in
                                with_split(d["params"], d.get("serve_split")).items()]),
        ("metric", "value", [[k, fmt_value(v)] for k, v in sorted(d["metrics"].items())]),
    ]
    for name, what, rows in sections:
        if rows:
            click.echo("")
            click.echo(table([name, what], rows))


def _check(c: dict) -> str:
    value = f"{c['metric']}={fmt_value(c['value'])}: " if c["value"] is not None else ""
    unit = " MB" if c["constraint"] == "memory_budget" else ""
    if c["margin"] is None:
        return f"{value}-"
    if c["broken"]:
        side = "short" if ">=" in c["constraint"] else "over"
        return f"{value}BROKEN, {fmt_value(c['margin'])}{unit} {side}"
    return f"{value}ok, {fmt_value(-c['margin'])}{unit} to spare"


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
                            full, study_groups(study)))


@cli.command()
@format_option
def workloads(fmt: str) -> None:
    """List built-in and installed workloads."""
    from objectives import list_workloads

    rows = list_workloads()
    if fmt == "json":
        click.echo(json.dumps([{"name": k, "description": v} for k, v in rows.items()], indent=2))
        return
    # Descriptions are wrapped, not cut: the lines fit the terminal (120 columns in a log).
    import textwrap

    first = max(len("workload"), *(len(k) for k in rows))
    width = max(30, table_width() - first - 2)
    body = []
    for k, v in rows.items():
        for i, line in enumerate(textwrap.wrap(v, width) or [""]):
            body.append([k if i == 0 else "", line])
    click.echo(table(["workload", "description"], body))


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
