"""Study lifecycle commands: run, create, worker, delete."""

from __future__ import annotations

import time
from typing import Any

import click

from .group import cli
from .options import (check_spec_args, info, log_format_option, open_target, prepare,
                      spec_options, storage_option, stored, study_option, url_of)
from .progress import Progress as _Progress
from .progress import progress_mode
from .tables import pareto_table, study_groups

# --- run / create / worker -----------------------------------------------------------

@cli.command()
@spec_options
@click.option("--workers", type=int, default=1, show_default=True,
              help="Local worker processes (spawned, one storage engine each).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None,
              metavar="[ADDRESS]",
              help="Start the workers as Ray tasks: on the Ray cluster at ADDRESS (e.g. "
                   "ray://head:10001 or auto), or on a local Ray instance when no address "
                   "is given. Needs pip install csearch[ray].")
@click.option("--gpus-per-worker", type=click.FloatRange(0, min_open=False), default=0,
              show_default=True, help="With --ray: GPUs Ray gives each worker.")
@click.option("--quiet", "-q", is_flag=True,
              help="No per-trial lines, stage lines or progress bar.")
@log_format_option
@click.pass_context
def run(ctx: click.Context, workers: int, quiet: bool, log_format: str,
        ray_address: str | None, gpus_per_worker: float, **p: Any) -> None:
    """Create or resume a study and run trials up to its budget.

    Prints the feasible Pareto front at the end. Running the same command again resumes
    the study and does no extra work once the budget is reached. Progress: a live bar on
    a terminal; in a log, one line per finished trial and at most one per 10 s while a
    long stage runs (--log-format json: JSON lines).
    """
    from ..errors import UsageError

    check_spec_args(p)  # before the heavy imports: a bad argument fails at once
    if workers < 1:
        raise UsageError(f"--workers must be 1 or more, got {workers}")
    if ray_address is not None:
        from ..raylaunch import check_ray

        check_ray()  # before anything is created: the error names the extra
    elif gpus_per_worker:
        raise UsageError("--gpus-per-worker is for --ray; local workers get one GPU each")
    progress = _Progress(progress_mode(quiet, log_format)).listen()
    try:
        _run(progress, workers, ray_address, gpus_per_worker, p)
    finally:
        progress.close()


def _run(progress: _Progress, workers: int, ray_address: str | None, gpus_per_worker: float,
         p: dict[str, Any]) -> None:
    from ..runner import count_finished

    study, tctx, created = prepare(p, need_context=False)
    url = url_of(p)
    done0 = count_finished(study)
    if tctx is None:
        spec = stored(study)
        progress.note(f"study {study.study_name!r}: budget of {spec.trials} trials already "
                      "reached; nothing to run (raise --trials to continue)")
        _print_front(progress, study, spec)
        return
    verb = "created" if created else "resuming"
    progress.note(f"study {study.study_name!r} {verb}: {done0}/{tctx.spec.trials} trials "
                  f"finished, workload {tctx.spec.workload}, space {tctx.spec.space}, "
                  f"device {tctx.device}, budget {tctx.budget_mb:g} MB"
                  + (f" ({tctx.budget_note})" if tctx.budget_note else "")
                  + (f", guard {tctx.spec.guard}" if tctx.spec.guard else "")
                  + (_start_costs(study.user_attrs) if created else ""))
    progress.start(tctx.spec, study)
    t0 = time.perf_counter()
    try:
        _run_workers(study, tctx, url, workers, ray_address, gpus_per_worker, progress)
    except KeyboardInterrupt as e:  # `Interrupted`: the workers stopped cleanly
        click.echo(_interrupted_line(study, tctx.spec, done0, time.perf_counter() - t0,
                                     str(e) or "SIGINT"))
        _print_front(progress, study, tctx.spec)
        raise click.exceptions.Exit(130) from None
    elapsed = time.perf_counter() - t0
    done = count_finished(study)
    progress.note(f"{done - done0} trial(s) in {elapsed:.1f}s; {done}/{tctx.spec.trials} "
                  "finished")
    _print_front(progress, study, tctx.spec)


def _interrupted_line(study: Any, spec: Any, done0: int, elapsed: float, signal: str) -> str:
    """What an interrupted run really finished, in the terms of `csearch studies` (trials
    by state): the interrupted trial is FAIL there, and is re-run first on resume."""
    from collections import Counter

    from ..attrs import INTERRUPTED, RETRY_OF
    from ..runner import count_finished

    trials = study.get_trials(deepcopy=False)
    states = " ".join(f"{k}={v}" for k, v in sorted(Counter(t.state.name
                                                            for t in trials).items()))
    retried = {t.user_attrs.get(RETRY_OF) for t in trials}
    stopped = [t.number for t in trials if t.state.name == "FAIL"
               and t.user_attrs.get(INTERRUPTED) and t.number not in retried]
    done = count_finished(study)
    line = (f"interrupted ({signal}) after {elapsed:.1f}s: {done - done0} trial(s) finished "
            f"in this run; study {study.study_name!r}: {len(trials)} trial(s), "
            f"{states or 'none'}; {done}/{spec.trials} of the budget finished")
    if stopped:
        line += (f"; interrupted: trial {', '.join(map(str, stopped))} (re-run first when "
                 "`csearch run` resumes)")
    return line


def _run_workers(study: Any, tctx: Any, url: str, workers: int, ray_address: str | None,
                 gpus_per_worker: float, progress: _Progress) -> None:
    """Run the study's trials here: one worker in this process, N local processes, or Ray
    tasks. Raises `Interrupted` when a signal stopped them."""
    quiet = progress.quiet
    if ray_address is not None:
        _run_on_ray(study, tctx, url, workers, ray_address, gpus_per_worker, progress, quiet)
    elif workers == 1:
        from ..workers import run_until_budget

        try:
            run_until_budget(study, tctx, on_trial=progress, raise_interrupt=True)
        finally:
            progress.close()
    else:
        from ..storage import backend_of
        from ..workers import run_local_workers

        if backend_of(url) == "sqlite":
            click.echo(f"warning: {workers} workers share one SQLite file; for many workers "
                       "use PostgreSQL (--storage postgresql://...) or a journal file",
                       err=True)
        poller = progress.poll_in_background(study)  # the workers report to the database
        try:
            # The study's values: an option left out on resume takes the stored one.
            codes = run_local_workers(study.study_name, url, workers,
                                      device=tctx.spec.device, workload=tctx.spec.workload)
        finally:
            poller.stop()
            progress.close()
        if any(codes):
            click.echo(f"warning: worker exit codes {codes}", err=True)
    if ray_address is not None or workers > 1:
        _settle(study, quiet)


def _start_costs(user_attrs: dict[str, Any]) -> str:
    """`; start: load 3.1s, baseline 20.4s (16/48 held-out windows), sensitivity 41.0s`."""
    from ..attrs import START_SECONDS

    cost = user_attrs.get(START_SECONDS) or {}
    parts = [f"{k} {cost[k]:.1f}s" for k in ("load", "baseline", "sensitivity") if k in cost]
    if "heldout_windows" in cost and len(parts) > 1:
        parts[1] += (f" ({cost['heldout_windows']:.0f}/{cost['heldout_total']:.0f} held-out "
                     "windows)")
    return "; start: " + ", ".join(parts) if parts else ""


def _print_front(progress: _Progress, study: Any, spec: Any) -> None:
    """The feasible front: a table, or with --log-format json one `front` JSON line."""
    import json

    from ..results import pareto_rows

    rows = pareto_rows(study)
    if progress.mode == "json":
        click.echo(json.dumps({"event": "front", "study": study.study_name, "trials": rows}))
        return
    click.echo(f"Pareto front of {study.study_name!r} ({len(rows)} feasible trial(s)):")
    click.echo(pareto_table(rows, spec.metric_names, study.user_attrs.get("baseline"),
                            groups=study_groups(study)))



def _settle(study: Any, quiet: bool) -> None:
    """Every worker has exited: a trial still RUNNING is a killed worker's (see settle)."""
    from ..storage import count_trials
    from ..workers import settle
    from .._optuna import storage_of, study_id_of
    from optuna.trial import TrialState

    running = count_trials(storage_of(study), study_id_of(study), (TrialState.RUNNING,))
    if not running:
        return
    info(f"{running} trial(s) still RUNNING after the workers exited: failing them once "
         "their heartbeat is stale", quiet)
    left = settle(study)
    if left:
        click.echo(f"warning: {left} trial(s) still RUNNING (a worker elsewhere?)", err=True)


def _run_on_ray(study: Any, tctx: Any, url: str, workers: int, address: str,
                gpus_per_worker: float, progress: Any, quiet: bool) -> None:
    from ..errors import UsageError
    from ..raylaunch import run_ray_workers
    from ..storage import backend_of

    remote = address != "local"
    if remote and backend_of(url) in ("sqlite", "journal"):
        raise UsageError(f"--ray {address}: workers on a Ray cluster need a database they "
                         "all reach (postgresql://, mysql:// or a csearch proxy's grpc://), "
                         "not a local file")
    poller = progress.poll_in_background(study)  # the workers report to the database
    try:
        ran = run_ray_workers(study.study_name, url, workers,
                              address=address if remote else None,
                              gpus_per_worker=gpus_per_worker, device=tctx.spec.device,
                              workload=tctx.spec.workload)
    finally:
        poller.stop()
        progress.close()
    info("Ray workers: " + ", ".join(f"{w} ran {n}" for w, n in ran), quiet)


@cli.command()
@spec_options
def create(**p: Any) -> None:
    """Store a study and its spec (and baseline) without running trials.

    Workers then join with `csearch worker --study NAME --storage URL`.
    """
    check_spec_args(p)  # before the heavy imports
    progress = _Progress(progress_mode(False, "text")).listen()  # the baseline's stages
    try:
        study, tctx, created = prepare(p)
    finally:
        progress.close()
    state = "created" if created else "already exists (spec matches)"
    click.echo(f"study {study.study_name!r} {state}; budget {tctx.spec.trials} trials")


@cli.command()
@study_option
@storage_option
@click.option("--device", default=None, help="Override the stored device (auto, cpu, cuda:N).")
@click.option("--timeout", type=float, default=None, help="Stop starting trials after N seconds.")
@click.option("--quiet", "-q", is_flag=True,
              help="No per-trial lines, stage lines or progress bar.")
@log_format_option
@click.option("--workload", default=None, metavar="package.module:factory",
              help="Confirm the study's plugin workload: a module:factory reference read "
                   "from the database is imported only when named here.")
@click.option("--threads", type=int, default=None,
              help="Intra-op CPU threads for evaluation (default: all cores). With several "
                   "workers on one machine, give each cores/workers.")
def worker(study_name: str, storage: str | None, device: str | None, timeout: float | None,
           quiet: bool, log_format: str, workload: str | None, threads: int | None) -> None:
    """Join an existing study from its stored spec and run trials until its budget.

    A database that is restarting when the worker starts is waited for, up to 20 s
    (CSEARCH_WORKER_START_WAIT); an outage later on is ridden out, results spooled."""
    from ..storage import open_storage, resolve_url
    from ..study import load_study, resolve_device, stored_spec
    from ..workers import join_study

    from ..placement import claim_gpu, place_on_gpu, placed_gpu, visible_gpus, wants_gpu

    url = resolve_url(storage)
    if device is not None and not wants_gpu(device):
        resolve_device(device)  # (auto and cuda are checked once placed: CUDA not yet started)
    if threads is not None:
        if threads < 1:
            from ..errors import UsageError

            raise UsageError(f"--threads must be 1 or more, got {threads}")
        import torch

        torch.set_num_threads(threads)
    from ..storage import WORKER_START_WAIT, backend_of, retry_while_restarting

    def start() -> tuple[Any, Any, set[Any]]:
        st = load_study(open_storage(url, create=False), study_name)
        return st, stored_spec(st), {t.user_attrs.get("worker") for t in
                                     st.get_trials(deepcopy=False) if t.state.name == "RUNNING"}

    st, spec, running = retry_while_restarting(start, WORKER_START_WAIT)
    if placed_gpu() is None and wants_gpu(device or spec.device):
        gpu = claim_gpu(visible_gpus())  # one GPU per worker on this machine, round-robin
        if gpu is not None:
            place_on_gpu(gpu)
    resolve_device(device or spec.device)
    if backend_of(url) == "sqlite" and running:
        click.echo("warning: other workers are running on this SQLite file; for many workers "
                   "use PostgreSQL (--storage postgresql://...) or a journal file", err=True)
    progress = _Progress(progress_mode(quiet, log_format)).listen().start(spec, st)
    try:
        n = join_study(study_name, url, device=device, worker_index=None, timeout=timeout,
                       on_trial=progress, workload=workload)
    finally:
        progress.close()
    progress.note(f"worker ran {n} trial(s)")



@cli.command()
@study_option
@storage_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def delete(study_name: str, storage: str | None, yes: bool) -> None:
    """Delete a study and its trials."""
    import optuna

    from ..storage import load_study

    st = open_target(storage)
    n = len(load_study(st, study_name).trials)
    if not yes:
        click.confirm(f"delete study {study_name!r} with {n} trial(s)?", abort=True)
    optuna.delete_study(study_name=study_name, storage=st)
    click.echo(f"deleted study {study_name!r}")
