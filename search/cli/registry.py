"""`csearch deploy`, `versions`, `promote`, `rollback` (model versions, `search.registry`)
and `loadtest` (a real load test of a running server, `search.loadtest`)."""

from __future__ import annotations

import json
from typing import Any

import click

from .group import cli
from .options import format_option, storage_option, study_option
from .tables import fmt_value, table


def _registry(storage: str | None) -> Any:
    from ..registry import Registry

    return Registry(storage)


@cli.command()
@study_option
@storage_option
@click.option("--trial", "number", type=int, required=True, help="Trial number to deploy.")
@click.option("--name", default=None, metavar="M",
              help="Model name (default: the study's name).")
@click.option("--force", is_flag=True,
              help="Deploy even an infeasible trial (one that breaks a constraint).")
def deploy(study_name: str, storage: str | None, number: int, name: str | None,
           force: bool) -> None:
    """Register a trial's packed model as the next immutable version of model M.

    The version lives in the study's database with the artifact's bytes, sha256, serve
    config and metrics, so `csearch serve` on any machine loads it from the URL alone.
    An infeasible trial is refused unless --force; the message says what it breaks.
    """
    from ..errors import UsageError
    from ..results import trial_detail
    from ..storage import load_study, open_storage
    from .tables import broken_text

    reg = _registry(storage)
    study = load_study(open_storage(reg.url, create=False), study_name)
    detail = trial_detail(study, number)
    if detail["broken"]:
        why = broken_text(detail)
        if not force:
            raise UsageError(f"trial {number} of study {study_name!r} is infeasible: {why}; "
                             "deploy it anyway with --force")
        click.echo(f"warning: deploying infeasible trial {number}: {why}", err=True)
    v = reg.deploy(study, number, name)
    click.echo(f"deployed trial {number} of study {study_name!r} as {v.name} v{v.version} "
               f"({v.size_bytes} bytes, sha256 {v.sha256[:12]}); "
               f"`csearch promote {v.name} {v.version}` makes it production")


@cli.command()
@click.option("--name", default=None, metavar="M", help="Only this model.")
@storage_option
@format_option
def versions(name: str | None, storage: str | None, fmt: str) -> None:
    """List model versions with their aliases and the promote/rollback history."""
    reg = _registry(storage)
    models = [name] if name is not None else reg.models()
    rows = [{"name": m, "aliases": reg.aliases(m),
             "versions": [v.to_dict() for v in reg.versions(m)],
             "history": reg.history(m)} for m in models]
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("(no model versions; `csearch deploy --study S --trial N` adds one)")
        return
    names = _objective_names(reg.url, {v["study"] for m in rows for v in m["versions"]})
    rows_out = []
    for m in rows:
        tags = {}
        for alias, v in m["aliases"].items():
            tags.setdefault(v, []).append(alias)
        for v in m["versions"]:
            met = v["metrics"]
            objectives = " ".join(f"{k}={fmt_value(met.get(k))}" for k in names[v["study"]])
            rows_out.append([m["name"], v["version"], ",".join(tags.get(v["version"], [])) or "-",
                          v["study"], v["trial"], v["created_at"][:19].replace("T", " "),
                          v["sha256"][:12], objectives])
    click.echo(table(["model", "version", "aliases", "study", "trial", "created (UTC)",
                       "sha256", "objectives (of the study)"], rows_out))
    for m in rows:
        if m["history"]:
            click.echo(f"\nhistory of {m['name']}:")
            for e in m["history"]:
                before = f" (was v{e['previous']})" if e["previous"] is not None else ""
                click.echo(f"  {e['at'][:19].replace('T', ' ')}  {e['action']:<8} "
                           f"production -> v{e['version']}{before}")


def _objective_names(url: str, studies: set[str]) -> dict[str, list[str]]:
    """Each study's objective metrics; a deleted study's, the default objectives."""
    from ..spec import DEFAULT_OBJECTIVES
    from ..storage import open_storage

    default = [o.split(":")[0] for o in DEFAULT_OBJECTIVES]
    if not studies:
        return {}
    st = open_storage(url, create=False, heartbeat=False)
    known = {s.study_name: s for s in st.get_all_studies()}
    out = {}
    for name in studies:
        s = known.get(name)
        objectives = (s.user_attrs.get("spec") or {}).get("objectives") if s else None
        out[name] = [o.split(":")[0] for o in objectives] if objectives else default
    return out


@cli.command()
@click.argument("name", metavar="M")
@click.argument("version", metavar="V", type=int)
@storage_option
def promote(name: str, version: int, storage: str | None) -> None:
    """Point model M's `production` alias at version V (recorded with a timestamp)."""
    reg = _registry(storage)
    before = reg.production(name)
    reg.promote(name, version)
    was = f"v{before}" if before is not None else "none"
    click.echo(f"{name}: production v{version} (was {was})")


@cli.command()
@click.argument("name", metavar="M")
@storage_option
def rollback(name: str, storage: str | None) -> None:
    """Move model M's `production` alias back to the previous production version."""
    reg = _registry(storage)
    before = reg.production(name)
    now = reg.rollback(name)
    click.echo(f"{name}: production v{now} (rolled back from v{before})")


@cli.command()
@click.option("--url", required=True, help="The server, e.g. http://127.0.0.1:8000.")
@study_option
@storage_option
@click.option("--trial", "number", type=int, default=None,
              help="Use this trial's replay seed and store the result as its `served` attr.")
@click.option("--requests", "n_requests", type=int, default=None,
              help="Trace length (default: the workload's, as in the replay).")
@click.option("--concurrency", type=int, default=None,
              help="Closed-loop clients (default: the workload's, as in the replay).")
@click.option("--workload", default=None, metavar="package.module:factory",
              help="Confirm the study's plugin workload (its request inputs are needed).")
@format_option
def loadtest(url: str, study_name: str, storage: str | None, number: int | None,
             n_requests: int | None, concurrency: int | None, workload: str | None,
             fmt: str) -> None:
    """Replay the study's request trace against a running server with concurrent
    closed-loop clients; print mean, p50 and p99 latency, throughput, hit rate, errors.
    Language models are sent streamed completions of the replay's prompts: time to first
    token, time per output token and tokens/s."""
    from ..errors import UsageError
    from ..loadtest import SERVED_ATTR, check_url, plan_for, run_loadtest
    from ..storage import backend_of, load_study, open_storage, resolve_url

    check_url(url)
    db = resolve_url(storage)
    st = open_storage(db, create=False, heartbeat=False)
    study = load_study(st, study_name)
    if number is not None and backend_of(db) not in ("sqlite", "postgresql", "mysql"):
        raise UsageError(f"--trial stores the result on the trial, which needs an SQL storage; "
                         f"{backend_of(db)} is not one (drop --trial to only measure)")
    plan = plan_for(study, number, requests=n_requests, concurrency=concurrency,
                    workload=workload)
    result = run_loadtest(url, plan)
    if number is not None:
        from .._optuna.finished_attrs import set_finished_user_attr

        trial_id = st.get_trial_id_from_study_id_trial_number(
            st.get_study_id_from_name(study_name), number)
        set_finished_user_attr(st, trial_id, SERVED_ATTR,
                               result.served_attr(url, plan.concurrency))
    if fmt == "json":
        click.echo(json.dumps(result.to_dict(), indent=2))
    elif result.lm is not None:
        lm = result.lm
        click.echo(table(
            ["requests", "concurrency", "errors", "ttft_p50_ms", "tpot_p50_ms", "p50_ms",
             "p99_ms", "tokens/s", "versions"],
            [[result.requests, plan.concurrency, result.errors, fmt_value(lm["ttft_p50_ms"]),
              fmt_value(lm["tpot_p50_ms"]), fmt_value(result.p50_ms), fmt_value(result.p99_ms),
              fmt_value(lm["throughput_tps"]), ",".join(map(str, result.versions)) or "-"]]))
    else:
        hit = fmt_value(result.hit_rate)
        click.echo(table(
            ["requests", "concurrency", "errors", "mean_ms", "p50_ms", "p99_ms",
             "throughput_rps", "hit_rate", "versions"],
            [[result.requests, plan.concurrency, result.errors, fmt_value(result.mean_ms),
              fmt_value(result.p50_ms), fmt_value(result.p99_ms),
              fmt_value(result.throughput_rps), hit,
              ",".join(map(str, result.versions)) or "-"]]))
    if result.first_error:
        click.echo(f"first error: {result.first_error}", err=True)
