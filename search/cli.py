"""The `csearch` command line. The only module that imports click.

Every user mistake surfaces as a `CsearchError`; the group turns it into one line on
stderr and exit status 2 (`--debug` shows the traceback instead).
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import sys
import time
import warnings
from typing import Any

import click

from spaces import CsearchError

__all__ = ["cli", "main"]

_DEFAULT_STUDY = "default"


class _UserError(click.ClickException):
    exit_code = 2


class _InternalError(click.ClickException):
    exit_code = 1

    def format_message(self) -> str:
        return f"internal error: {self.message} (run with --debug for the traceback)"


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        debug = bool(ctx.params.get("debug"))
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except CsearchError as e:
            if debug:
                raise
            raise _UserError(str(e)) from None
        except KeyboardInterrupt:
            raise click.Abort() from None
        except Exception as e:
            if debug:
                raise
            raise _InternalError(f"{type(e).__name__}: {e}") from None


def _quiet_libraries(debug: bool) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.DEBUG if debug else optuna.logging.ERROR)
    if not debug:
        warnings.filterwarnings("ignore")
        logging.getLogger("torch").setLevel(logging.ERROR)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks and library logs.")
@click.version_option(package_name="csearch")
def cli(debug: bool) -> None:
    """Search pruning, quantization, fine-tuning and serving knobs of a PyTorch model.

    Each trial really compresses, fine-tunes and serves the model and measures accuracy,
    latency, size and memory. Results go to an Optuna storage (default ./studies.db).
    """
    _quiet_libraries(debug)


# --- shared options ------------------------------------------------------------------

def _storage_option(f: Any) -> Any:
    return click.option(
        "--storage", default=None, metavar="URL",
        help="Optuna storage URL: sqlite:///FILE, postgresql://..., mysql://..., "
             "journal:///FILE. Default: $CSEARCH_STORAGE or sqlite:///studies.db.",
    )(f)


def _study_option(f: Any) -> Any:
    return click.option("--study", "study_name", default=_DEFAULT_STUDY, show_default=True,
                         help="Study name.")(f)


def _format_option(f: Any) -> Any:
    return click.option("--format", "fmt", type=click.Choice(["table", "json"]),
                        default="table", show_default=True,
                        help="table for people, json (stdout only) for tools.")(f)


def _spec_options(f: Any) -> Any:
    opts = [
        click.option("--workload", default="digits-cnn", show_default=True,
                     help="Built-in workload name (see `csearch workloads`) or "
                          "package.module:factory."),
        click.option("--space", default="joint", show_default=True,
                     help="Built-in space name (see `csearch spaces`) or a TOML file."),
        click.option("--objective", "objectives", multiple=True, metavar="METRIC:max|min",
                     help="Objective, repeatable. Default: accuracy:max latency_mean_ms:min "
                          "size_mb:min."),
        click.option("--constraint", "constraints", multiple=True, metavar="EXPR",
                     help="Feasibility constraint, repeatable, e.g. 'accuracy_drop<=0.01'. "
                          "The memory budget is always a constraint."),
        click.option("--sampler", type=click.Choice(["tpe", "nsga2", "nsga3", "gp", "random",
                                                     "grid"]),
                     default="tpe", show_default=True,
                     help="tpe is multivariate, grouped TPE."),
        click.option("--trials", type=int, default=20, show_default=True,
                     help="Total budget of finished trials for the study (all workers). "
                          "Rerunning resumes up to it."),
        click.option("--timeout", type=float, default=None,
                     help="Stop starting trials after this many seconds."),
        click.option("--device", default="auto", show_default=True,
                     help="auto, cpu, cuda or cuda:N."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Seed for sampling, fine-tuning and the request trace."),
        click.option("--memory-budget-mb", type=float, default=None,
                     help="Serving memory budget S_total in MB (default: the workload's)."),
        click.option("--artifacts", default="auto", show_default=True, metavar="DIR|auto|none",
                     help="Where trials' packed models go (auto: beside the database)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return _study_option(_storage_option(f))


def _make_spec(p: dict[str, Any], url: str) -> Any:
    from .spec import DEFAULT_OBJECTIVES
    from .storage import artifact_dir_for
    from .study import build_spec

    art = p["artifacts"]
    artifacts = (None if art == "none" else str(artifact_dir_for(url)) if art == "auto"
                 else os.path.abspath(art))
    if p["trials"] is not None and p["trials"] < 0:
        from .errors import UsageError

        raise UsageError(f"--trials must be 0 or more, got {p['trials']}")
    return build_spec(
        workload=p["workload"], space=p["space"],
        objectives=tuple(p["objectives"]) or DEFAULT_OBJECTIVES,
        constraints=tuple(p["constraints"]), sampler=p["sampler"], seed=p["seed"],
        device=p["device"], trials=p["trials"], timeout=p["timeout"],
        memory_budget_mb=p["memory_budget_mb"], artifacts=artifacts,
    )


def _prepare(p: dict[str, Any], need_context: bool = True) -> tuple[Any, Any, bool]:
    """Validate everything before anything is written; return (study, ctx, created).

    A resumed study whose budget is already spent needs no workload: ctx is then None
    (unless `need_context`), so rerunning a finished command costs no model building.
    """
    from .runner import remaining_budget
    from .storage import _check_sqlite, _file_path, backend_of, open_storage, resolve_url
    from .study import create_or_resume, load_context

    url = resolve_url(p["storage"])
    spec = _make_spec(p, url)
    storage = None
    if backend_of(url) == "sqlite":
        _check_sqlite(url, create=True)
        path = _file_path(url)
        if path is not None and path.exists():
            storage = open_storage(url, create=True)
    else:
        storage = open_storage(url, create=True)
    if storage is not None and p["study_name"] in {
        s.study_name for s in storage.get_all_studies()
    }:
        study, _ = create_or_resume(storage, p["study_name"], spec, None)
        if not need_context and remaining_budget(study, spec.trials) == 0:
            return study, None, False
    ctx = load_context(spec)
    if storage is None:
        storage = open_storage(url, create=True)
    study, created = create_or_resume(storage, p["study_name"], spec, ctx)
    return study, ctx, created


# --- run / create / worker -----------------------------------------------------------

@cli.command()
@_spec_options
@click.option("--workers", type=int, default=1, show_default=True,
              help="Local worker processes (spawned, one storage engine each).")
@click.option("--quiet", "-q", is_flag=True,
              help="No per-trial lines and no progress bar (also off when stdout is not a "
                   "terminal).")
@click.pass_context
def run(ctx: click.Context, workers: int, quiet: bool, **p: Any) -> None:
    """Create or resume a study and run trials up to its budget.

    Prints the feasible Pareto front at the end. Running the same command again resumes
    the study and does no extra work once the budget is reached.
    """
    from .errors import UsageError
    from .results import pareto_rows
    from .runner import count_finished

    if workers < 1:
        raise UsageError(f"--workers must be 1 or more, got {workers}")
    study, tctx, created = _prepare(p, need_context=False)
    url = _url(p)
    done0 = count_finished(study)
    if tctx is None:
        spec = _stored(study)
        _info(f"study {study.study_name!r}: budget of {spec.trials} trials already reached; "
              "nothing to run (raise --trials to continue)", quiet)
        click.echo(f"Pareto front of {study.study_name!r} "
                   f"({len(pareto_rows(study))} feasible trial(s)):")
        click.echo(_pareto_table(pareto_rows(study), spec.metric_names,
                                 study.user_attrs.get("baseline")))
        return
    verb = "created" if created else "resuming"
    _info(f"study {study.study_name!r} {verb}: {done0}/{tctx.spec.trials} trials finished, "
          f"workload {tctx.spec.workload}, space {tctx.spec.space}, "
          f"device {tctx.device}, budget {tctx.budget_mb:g} MB", quiet)
    progress = _Progress(tctx.spec, study, quiet or not sys.stdout.isatty())
    t0 = time.perf_counter()
    if workers == 1:
        from .workers import run_until_budget

        try:
            run_until_budget(study, tctx, on_trial=progress)
        finally:
            progress.close()
    else:
        from .storage import backend_of
        from .workers import run_local_workers

        if backend_of(url) == "sqlite":
            click.echo(f"warning: {workers} workers share one SQLite file; for many workers "
                       "use PostgreSQL (--storage postgresql://...) or a journal file",
                       err=True)
        poller = progress.poll_in_background(study)  # the workers report to the database
        try:
            codes = run_local_workers(study.study_name, url, workers, device=p["device"],
                                      workload=p["workload"])
        finally:
            poller.stop()
            progress.close()
        if any(codes):
            click.echo(f"warning: worker exit codes {codes}", err=True)
    elapsed = time.perf_counter() - t0
    done = count_finished(study)
    _info(f"{done - done0} trial(s) in {elapsed:.1f}s; {done}/{tctx.spec.trials} finished", quiet)
    rows = pareto_rows(study)
    click.echo(f"Pareto front of {study.study_name!r} ({len(rows)} feasible trial(s)):")
    click.echo(_pareto_table(rows, tctx.spec.metric_names, study.user_attrs.get("baseline")))


def _stored(study: Any) -> Any:
    from .spec import stored_spec

    return stored_spec(study)


def _url(p: dict[str, Any]) -> str:
    from .storage import resolve_url

    return resolve_url(p["storage"])


def _info(msg: str, quiet: bool) -> None:
    if not quiet:
        click.echo(msg, err=True)


@cli.command()
@_spec_options
def create(**p: Any) -> None:
    """Store a study and its spec (and baseline) without running trials.

    Workers then join with `csearch worker --study NAME --storage URL`.
    """
    study, tctx, created = _prepare(p)
    state = "created" if created else "already exists (spec matches)"
    click.echo(f"study {study.study_name!r} {state}; budget {tctx.spec.trials} trials")


@cli.command()
@_study_option
@_storage_option
@click.option("--device", default=None, help="Override the stored device (auto, cpu, cuda:N).")
@click.option("--timeout", type=float, default=None, help="Stop starting trials after N seconds.")
@click.option("--quiet", "-q", is_flag=True,
              help="No per-trial lines and no progress bar (also off when stdout is not a "
                   "terminal).")
@click.option("--workload", default=None, metavar="package.module:factory",
              help="Confirm the study's plugin workload: a module:factory reference read "
                   "from the database is imported only when named here.")
@click.option("--threads", type=int, default=None,
              help="Intra-op CPU threads for evaluation (default: all cores). With several "
                   "workers on one machine, give each cores/workers.")
def worker(study_name: str, storage: str | None, device: str | None, timeout: float | None,
           quiet: bool, workload: str | None, threads: int | None) -> None:
    """Join an existing study from its stored spec and run trials until its budget.

    A database that is restarting when the worker starts is waited for, up to 20 s
    (CSEARCH_WORKER_START_WAIT); an outage later on is ridden out, results spooled."""
    from .storage import open_storage, resolve_url
    from .study import load_study, resolve_device, stored_spec
    from .workers import join_study

    url = resolve_url(storage)
    if device is not None:
        resolve_device(device)
    if threads is not None:
        if threads < 1:
            from .errors import UsageError

            raise UsageError(f"--threads must be 1 or more, got {threads}")
        import torch

        torch.set_num_threads(threads)
    from .storage import WORKER_START_WAIT, backend_of, retry_while_restarting

    def start() -> tuple[Any, Any, set[Any]]:
        st = load_study(open_storage(url, create=False), study_name)
        return st, stored_spec(st), {t.user_attrs.get("worker") for t in
                                     st.get_trials(deepcopy=False) if t.state.name == "RUNNING"}

    st, spec, running = retry_while_restarting(start, WORKER_START_WAIT)
    if backend_of(url) == "sqlite" and running:
        click.echo("warning: other workers are running on this SQLite file; for many workers "
                   "use PostgreSQL (--storage postgresql://...) or a journal file", err=True)
    progress = _Progress(spec, st, quiet or not sys.stdout.isatty())
    try:
        n = join_study(study_name, url, device=device, worker_index=None, timeout=timeout,
                       on_trial=progress, workload=workload)
    finally:
        progress.close()
    _info(f"worker ran {n} trial(s)", quiet)


# --- listings ------------------------------------------------------------------------

def _open(storage: str | None, study_name: str | None = None) -> Any:
    from .storage import load_study, open_storage, resolve_url

    st = open_storage(resolve_url(storage), create=False)
    if study_name is None:
        return st
    return load_study(st, study_name)


@cli.command()
@_storage_option
@_format_option
def studies(storage: str | None, fmt: str) -> None:
    """List studies with trial counts by state and best values."""
    from .results import study_summaries

    rows = study_summaries(_open(storage))
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    table = []
    for r in rows:
        states = " ".join(f"{k}={v}" for k, v in sorted(r["states"].items()))
        best = " ".join(f"{k}={_fmt(v)}" for k, v in r["best"].items())
        table.append([r["name"], r["workload"] or "-", f"{r['trials']}/{r['budget']}", states,
                      r["pareto_size"], best])
    click.echo(_table(["study", "workload", "trials/budget", "states", "pareto", "best"], table))


@cli.command()
@_study_option
@_storage_option
@_format_option
@click.option("--state", "states", multiple=True,
              type=click.Choice(["COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"]),
              help="Only trials in these states.")
def trials(study_name: str, storage: str | None, fmt: str, states: tuple[str, ...]) -> None:
    """List a study's trials with params, metrics, values and feasibility."""
    from .results import trial_rows

    study = _open(storage, study_name)
    rows = [r for r in trial_rows(study) if not states or r["state"] in states]
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    names = study.metric_names or []
    table = [[r["number"], r["state"] + (" (stale)" if r.get("stale") else ""), _feas(r["feasible"]),
              *[_fmt(v) for v in (r["values"] or [None] * len(names))],
              _fmt(r["duration_s"]), _params(r["params"]), r.get("reason", "")[:60]]
             for r in rows]
    click.echo(_table(["#", "state", "feasible", *names, "seconds", "params", "reason"], table))


@cli.command()
@_study_option
@_storage_option
@_format_option
def pareto(study_name: str, storage: str | None, fmt: str) -> None:
    """The feasible Pareto front (infeasible trials are never on it)."""
    from .results import pareto_rows

    study = _open(storage, study_name)
    rows = pareto_rows(study)
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(_pareto_table(rows, study.metric_names or [], study.user_attrs.get("baseline")))


@cli.command()
@_format_option
def workloads(fmt: str) -> None:
    """List built-in and installed workloads."""
    from objectives import list_workloads

    rows = list_workloads()
    if fmt == "json":
        click.echo(json.dumps([{"name": k, "description": v} for k, v in rows.items()], indent=2))
        return
    click.echo(_table(["workload", "description"], [[k, v] for k, v in rows.items()]))


@cli.command()
@_format_option
def spaces(fmt: str) -> None:
    """List built-in search spaces and their parameters."""
    from spaces import builtin_spaces, load_space

    out = []
    for name in builtin_spaces():
        sp = load_space(name)
        out.append({"name": name, "params": {p.name: p.describe() for p in sp.params}})
    if fmt == "json":
        click.echo(json.dumps(out, indent=2))
        return
    table = []
    for s in out:
        for i, (k, v) in enumerate(s["params"].items()):
            table.append([s["name"] if i == 0 else "", k, v])
    click.echo(_table(["space", "parameter", "values"], table))


@cli.command()
@_study_option
@_storage_option
@click.option("--trial", "number", type=int, required=True, help="Trial number to export.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Directory to write model.safetensors and csearch.json into.")
@click.option("--workload", default=None, metavar="package.module:factory",
              help="Confirm the study's plugin workload, needed only when the trial has no "
                   "stored artifact and must be re-evaluated.")
def export(study_name: str, storage: str | None, number: int, output: str,
           workload: str | None) -> None:
    """Write a trial's packed model and metadata; `search.export.load(DIR)` reloads it."""
    from .export import export_trial

    study = _open(storage, study_name)
    meta = export_trial(study, number, output, workload=workload)
    click.echo(f"wrote {output}/model.safetensors ({meta['model_bytes']} bytes, "
               f"from {meta['model_source']}) and {output}/csearch.json")


@cli.command()
@_study_option
@_storage_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def delete(study_name: str, storage: str | None, yes: bool) -> None:
    """Delete a study and its trials."""
    import optuna

    study = _open(storage, study_name)
    n = len(study.trials)
    if not yes:
        click.confirm(f"delete study {study_name!r} with {n} trial(s)?", abort=True)
    optuna.delete_study(study_name=study_name, storage=study._storage)
    click.echo(f"deleted study {study_name!r}")


@cli.command()
@_study_option
@_storage_option
@click.option("-o", "--output", default="report.html", show_default=True,
              type=click.Path(dir_okay=False), help="HTML file to write.")
def report(study_name: str, storage: str | None, output: str) -> None:
    """Write a self-contained HTML report (plotly inline, works offline).

    Pareto front (infeasible trials greyed), hypervolume history, parameter importances
    per objective, parallel coordinates, timeline by worker, cache and throughput against
    the memory split, a sortable table of Pareto trials with their export commands, and the
    baseline and environment.
    """
    from .report import write_report
    from .storage import resolve_url

    url = resolve_url(storage)
    study = _open(storage, study_name)
    t0 = time.perf_counter()
    rep = write_report(study, output, storage_url=url)
    size = os.path.getsize(output)
    click.echo(f"wrote {output} ({size / 1e6:.1f} MB, {len(rep.pareto.numbers)} complete "
               f"trial(s), {len(rep.table.rows)} on the Pareto front) in "
               f"{time.perf_counter() - t0:.1f}s")


@cli.command()
@_study_option
@_storage_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. The dashboard has no login: keep 127.0.0.1 unless the "
                   "network is trusted.")
@click.option("--port", type=int, default=8080, show_default=True, help="Port to listen on.")
def dashboard(study_name: str, storage: str | None, host: str, port: int) -> None:
    """Serve optuna-dashboard on the study's storage, with its artifact store attached.

    Shows every study of the storage; --study picks whose artifact store (trials' packed
    models) the dashboard serves for download.
    """
    from .dashboard import artifact_store_for, serve
    from .errors import UsageError
    from .storage import redact, resolve_url
    from .spec import stored_spec

    if not 0 < port < 65536:
        raise UsageError(f"--port must be 1..65535, got {port}")
    url = resolve_url(storage)
    study = _open(storage, study_name)
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


# --- formatting ----------------------------------------------------------------------

class _Progress:
    """Progress of a study on stdout: one line per finished trial (number, state, key
    metrics, feasibility, seconds) and below it a bar redrawn in place with finished/budget,
    the best feasible value of each objective and an ETA.

    Silent when `quiet` (``--quiet``, or stdout is not a terminal). The trials a worker
    finishes arrive through `__call__` (an Optuna callback); for `run --workers N` a
    background thread polls the database instead (`poll_in_background`).
    """

    KEYS = ("accuracy", "latency_ms", "size_mb", "memory_mb", "cache_hit_rate",
            "throughput_rps")
    WIDTH = 24

    def __init__(self, spec: Any, study: Any, quiet: bool, stream: Any = None,
                 clock: Any = time.perf_counter):
        import threading

        from .runner import FINISHED

        self.spec, self.quiet, self.clock = spec, quiet, clock
        self.stream = stream if stream is not None else sys.stdout
        self.names, self.dirs = list(spec.metric_names), list(spec.directions)
        self.best: dict[str, float] = {}
        self.seen: set[int] = set()
        self.lock = threading.Lock()
        self.t0 = clock()
        self.ran = 0
        self.bar = False
        trials = study.get_trials(deepcopy=False, states=FINISHED) if study is not None else []
        for t in trials:
            self.seen.add(t.number)
            self._update_best(t)
        self.done = len(trials)

    def _update_best(self, t: Any) -> None:
        from .results import is_feasible

        if t.state.name != "COMPLETE" or not t.values or is_feasible(t) is False:
            return
        for name, d, v in zip(self.names, self.dirs, t.values):
            old = self.best.get(name)
            if old is None or (v > old if d == "maximize" else v < old):
                self.best[name] = v

    def __call__(self, study: Any, t: Any) -> None:
        with self.lock:
            if t.number in self.seen:
                return
            self.seen.add(t.number)
            self.done += 1
            self.ran += 1
            self._update_best(t)
            if self.quiet:
                return
            self._write("\r\033[K" if self.bar else "")
            self._write(self.trial_line(t) + "\n")
            self._write(self.bar_line())
            self.bar = True

    def trial_line(self, t: Any) -> str:
        from .results import is_feasible

        m = t.user_attrs.get("metrics") or t.user_attrs.get("partial_metrics") or {}
        keys = list(dict.fromkeys([*self.names, *self.KEYS]))
        vals = " ".join(f"{k}={_fmt(m[k])}" for k in keys if k in m)
        feas = {True: "feasible", False: "INFEASIBLE", None: "-"}[is_feasible(t)]
        dur = t.duration.total_seconds() if t.duration else float("nan")
        reason = t.user_attrs.get("fail_reason") or t.user_attrs.get("pruned_reason") or ""
        return (f"trial {t.number:>4} {t.state.name:<8} {feas:<10} {vals} {dur:.2f}s "
                f"{reason[:80]}").rstrip()

    def bar_line(self) -> str:
        budget = self.spec.trials
        best = " ".join(f"{k}={_fmt(self.best[k])}" for k in self.names if k in self.best)
        best = f"best {best}" if best else "no feasible trial yet"
        if not budget:
            return f"{self.done} finished  {best}"
        frac = min(1.0, self.done / budget)
        fill = int(round(frac * self.WIDTH))
        bar = "#" * fill + "-" * (self.WIDTH - fill)
        left = max(0, budget - self.done)
        eta = ""
        if self.ran and left:
            eta = f"  eta {_duration((self.clock() - self.t0) / self.ran * left)}"
        elif not left:
            eta = "  done"
        return f"[{bar}] {self.done}/{budget}  {best}{eta}"

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def close(self) -> None:
        with self.lock:
            if self.bar and not self.quiet:
                self._write("\n")
            self.bar = False

    def poll_in_background(self, study: Any, every: float = 2.0) -> Any:
        """Feed trials finished by other processes to the progress, until `stop()`."""
        import threading

        from .runner import FINISHED

        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(every):
                try:
                    for t in study.get_trials(deepcopy=False, states=FINISHED):
                        if t.number not in self.seen:
                            self(study, t)
                except Exception:  # a busy database: try again at the next tick
                    continue

        th = threading.Thread(target=loop, name="csearch-progress", daemon=True)
        th.start()

        class _Stopper:
            def stop(self_inner) -> None:
                stop.set()
                th.join(timeout=every + 5)

        return _Stopper()


def _duration(sec: float) -> str:
    sec = int(round(sec))
    if sec < 60:
        return f"{sec}s"
    if sec < 3600:
        return f"{sec // 60}m{sec % 60:02d}s"
    return f"{sec // 3600}h{sec % 3600 // 60:02d}m"


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}"
    return str(v)


def _feas(v: Any) -> str:
    return "-" if v is None else ("yes" if v else "no")


def _params(p: dict[str, Any]) -> str:
    return " ".join(f"{k}={_fmt(v)}" for k, v in p.items())


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _pareto_table(rows: list[dict[str, Any]], names: list[str], baseline: dict | None) -> str:
    if not rows:
        return "(no feasible trials)"
    base_size = (baseline or {}).get("size_mb")
    table = []
    for r in rows:
        m = r["metrics"]
        ratio = f"{base_size / m['size_mb']:.1f}x" if base_size and m.get("size_mb") else "-"
        table.append([r["number"], *[_fmt(v) for v in r["values"]], ratio,
                      _fmt(m.get("accuracy_drop")), _fmt(m.get("throughput_rps")),
                      _params(r["params"])])
    return _table(["#", *names, "smaller", "acc_drop", "rps", "params"], table)


def main() -> None:
    try:
        cli(prog_name="csearch")
    finally:
        storage = sys.modules.get(f"{__package__}.storage")  # not imported: nothing opened
        if storage is not None:
            storage.close_storages()
        # The interpreter's last full collection scans every object left, torch's included
        # (1-2 s after a run, measured); the process ends anyway, so skip it. Finalisers
        # and atexit handlers still run, and the storages are closed above.
        gc.freeze()


if __name__ == "__main__":
    main()
