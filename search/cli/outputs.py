"""Commands that write or serve a study's results: export, report, dashboard."""

from __future__ import annotations

import os
import time

import click

from .group import cli
from .options import open_target, storage_option, study_option

@cli.command()
@study_option
@storage_option
@click.option("--trial", "number", type=int, required=True, help="Trial number to export.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Directory to write model.safetensors and csearch.json into.")
@click.option("--workload", default=None, metavar="package.module:factory",
              help="Confirm the study's plugin workload, needed only when the trial has no "
                   "stored artifact and must be re-evaluated.")
def export(study_name: str, storage: str | None, number: int, output: str,
           workload: str | None) -> None:
    """Write a trial's packed model and metadata; `search.export.load(DIR)` reloads it."""
    from ..export import export_trial

    study = open_target(storage, study_name)
    meta = export_trial(study, number, output, workload=workload)
    click.echo(f"wrote {os.path.join(output, 'model.safetensors')} ({meta['model_bytes']} "
               f"bytes, from {meta['model_source']}) and {os.path.join(output, 'csearch.json')}")



@cli.command()
@study_option
@storage_option
@click.option("-o", "--output", default="report.html", show_default=True,
              type=click.Path(dir_okay=False), help="HTML file to write.")
def report(study_name: str, storage: str | None, output: str) -> None:
    """Write a self-contained HTML report (plotly inline, works offline).

    Pareto front (infeasible trials greyed), hypervolume history, parameter importances
    per objective, parallel coordinates, timeline by worker, cache and throughput against
    the memory split, a sortable table of Pareto trials with their export commands, and the
    baseline and environment.
    """
    from ..report import write_report
    from ..storage import resolve_url

    url = resolve_url(storage)
    study = open_target(storage, study_name)
    t0 = time.perf_counter()
    rep = write_report(study, output, storage_url=url)
    size = os.path.getsize(output)
    click.echo(f"wrote {output} ({size / 1e6:.1f} MB, {len(rep.pareto.numbers)} complete "
               f"trial(s), {len(rep.table.rows)} on the Pareto front) in "
               f"{time.perf_counter() - t0:.1f}s; {rep.context.early_stop_line()}")


@cli.command()
@click.option("--study", "study_name", default=None, metavar="NAME",
              help="Serve this study's artifacts (its packed models) and open its page. "
                   "Default: every study's artifacts in the directory beside the database.")
@storage_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. The dashboard has no login: keep 127.0.0.1 unless the "
                   "network is trusted.")
@click.option("--port", type=int, default=8080, show_default=True, help="Port to listen on.")
def dashboard(study_name: str | None, storage: str | None, host: str, port: int) -> None:
    """Serve optuna-dashboard on a storage, with the trials' packed models downloadable.

    Shows every study of the storage. The studies of one database share the artifact
    directory beside it; --study serves the artifact directory that study stored instead.
    """
    from ..dashboard import artifact_store_at, serve
    from ..errors import UsageError
    from ..spec import stored_spec
    from ..storage import artifact_dir_for, redact, resolve_url

    if not 0 < port < 65536:
        raise UsageError(f"--port must be 1..65535, got {port}")
    url = resolve_url(storage)
    st = open_target(storage)
    page = "/dashboard"
    if study_name is None:
        art: str | None = str(artifact_dir_for(url))
    else:
        study = open_target(storage, study_name)
        art = stored_spec(study).artifacts
        page += f"/studies/{st.get_study_id_from_name(study_name)}"
    store = artifact_store_at(art)
    if store is None:
        click.echo(f"note: artifact directory {art} does not exist (yet); artifacts will not "
                   "download" if art else
                   "note: the study runs with --artifacts none; no models to download",
                   err=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: binding to {host}: anyone who can reach it can read and edit "
                   "the studies (no authentication)", err=True)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"optuna-dashboard for {redact(url)} at http://{shown}:{port}{page} "
               f"(artifacts: {art if store else 'none'}); Ctrl-C stops it", err=True)
    try:
        serve(st, host=host, port=port, artifact_store=store)
    except OSError as e:
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
