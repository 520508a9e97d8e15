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
    click.echo(f"wrote {output}/model.safetensors ({meta['model_bytes']} bytes, "
               f"from {meta['model_source']}) and {output}/csearch.json")



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
               f"{time.perf_counter() - t0:.1f}s")


@cli.command()
@study_option
@storage_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. The dashboard has no login: keep 127.0.0.1 unless the "
                   "network is trusted.")
@click.option("--port", type=int, default=8080, show_default=True, help="Port to listen on.")
def dashboard(study_name: str, storage: str | None, host: str, port: int) -> None:
    """Serve optuna-dashboard on the study's storage, with its artifact store attached.

    Shows every study of the storage; --study picks whose artifact store (trials' packed
    models) the dashboard serves for download.
    """
    from ..dashboard import artifact_store_for, serve
    from ..errors import UsageError
    from ..storage import redact, resolve_url
    from ..spec import stored_spec

    if not 0 < port < 65536:
        raise UsageError(f"--port must be 1..65535, got {port}")
    url = resolve_url(storage)
    study = open_target(storage, study_name)
    art = stored_spec(study).artifacts
    store = artifact_store_for(study)
    if store is None:
        click.echo(f"note: artifact directory {art} does not exist (yet); artifacts will not "
                   "download" if art else
                   "note: the study runs with --artifacts none; no models to download",
                   err=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: binding to {host}: anyone who can reach it can read and edit "
                   "the studies (no authentication)", err=True)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"optuna-dashboard for {redact(url)} at "
               f"http://{shown}:{port}/dashboard/studies/{study._study_id} "
               f"(artifacts: {art if store else 'none'}); Ctrl-C stops it", err=True)
    try:
        serve(study, host=host, port=port, artifact_store=store)
    except OSError as e:
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
