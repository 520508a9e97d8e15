"""Options shared by several commands, and the study set-up they feed."""

from __future__ import annotations

import os
from typing import Any

import click

__all__ = ["DEFAULT_STUDY", "storage_option", "study_option", "format_option",
           "spec_options", "check_spec_args", "log_format_option", "make_spec",
           "given_options", "resumed_spec", "prepare", "stored", "url_of", "info",
           "open_target"]

DEFAULT_STUDY = "default"

# --- shared options ------------------------------------------------------------------

def storage_option(f: Any) -> Any:
    return click.option(
        "--storage", default=None, metavar="URL",
        help="Optuna storage URL: sqlite:///FILE, postgresql://..., mysql://..., "
             "journal:///FILE. Default: $CSEARCH_STORAGE or sqlite:///studies.db.",
    )(f)


def study_option(f: Any) -> Any:
    return click.option("--study", "study_name", default=DEFAULT_STUDY, show_default=True,
                         help="Study name.")(f)


def format_option(f: Any) -> Any:
    return click.option("--format", "fmt", type=click.Choice(["table", "json"]),
                        default="table", show_default=True,
                        help="table for people, json (stdout only) for tools.")(f)


def spec_options(f: Any) -> Any:
    opts = [
        click.option("--workload", default="tiny-lm", show_default=True,
                     help="Built-in workload name (see `csearch workloads`), "
                          "package.module:factory, or causal-lm:MODEL_DIR (a local Hugging "
                          "Face causal LM; with --workload-data)."),
        click.option("--workload-data", default=None, metavar="FILE",
                     help="Text file a causal-lm:MODEL_DIR workload is judged and "
                          "fine-tuned on (1 line in 10 held out)."),
        click.option("--space", default=None,
                     help="Built-in space name (see `csearch spaces`) or a TOML file. "
                          "Default: lm-budget for language models (tiny-lm, causal-lm:DIR), "
                          "joint otherwise."),
        click.option("--objective", "objectives", multiple=True, metavar="METRIC:max|min",
                     help="Objective, repeatable. Default for language models: accuracy:max "
                          "throughput_tps:max memory_mb:min; otherwise accuracy:max "
                          "latency_mean_ms:min size_mb:min."),
        click.option("--constraint", "constraints", multiple=True, metavar="EXPR",
                     help="Feasibility constraint, repeatable, e.g. 'accuracy_drop<=0.01'. "
                          "The memory budget is always a constraint."),
        click.option("--no-guard", is_flag=True,
                     help="No default quality guard. Without it, a study none of whose "
                          "constraints is about quality (accuracy, accuracy_drop, "
                          "perplexity) gets 'accuracy_drop<=0.01'."),
        click.option("--sampler", type=click.Choice(["tpe", "refine", "nsga2", "nsga3", "gp",
                                                     "random", "grid"]),
                     default="refine", show_default=True,
                     help="refine: neighbours of the feasible front (a quarter to three "
                          "quarters of the trials) and tpe for the rest; tpe: multivariate, "
                          "grouped TPE."),
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
    return study_option(storage_option(f))


def log_format_option(f: Any) -> Any:
    return click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
                        show_default=True,
                        help="Progress as text (a live bar on a terminal, else one line per "
                             "finished trial and per long stage) or as JSON lines.")(f)


def check_spec_args(p: dict[str, Any]) -> None:
    """The checks that need no model, storage or torch, so a bad argument is refused at
    once rather than after the heavy imports (`make_spec` checks everything again)."""
    from ..errors import UsageError
    from ..metrics import parse_constraint, parse_objective

    if p["trials"] is not None and p["trials"] < 0:
        raise UsageError(f"--trials must be 0 or more, got {p['trials']}")
    if p["timeout"] is not None and not p["timeout"] > 0:
        raise UsageError(f"--timeout must be positive seconds, got {p['timeout']:g}")
    if p["memory_budget_mb"] is not None and not p["memory_budget_mb"] > 0:
        raise UsageError(f"--memory-budget-mb must be positive, got {p['memory_budget_mb']:g}")
    for o in p["objectives"]:
        parse_objective(o)
    for c in p["constraints"]:
        parse_constraint(c)


def make_spec(p: dict[str, Any], url: str) -> Any:
    from ..spec import default_guard, workload_defaults
    from ..storage import artifact_dir_for
    from ..study import build_spec, workload_ref

    art = p["artifacts"]
    artifacts = (None if art == "none" else str(artifact_dir_for(url)) if art == "auto"
                 else os.path.abspath(art))
    space, objectives = workload_defaults(p["workload"])
    return build_spec(
        workload=workload_ref(p["workload"], p.get("workload_data")),
        space=p["space"] or space, objectives=tuple(p["objectives"]) or objectives,
        constraints=tuple(p["constraints"]), sampler=p["sampler"], seed=p["seed"],
        device=p["device"], trials=p["trials"], timeout=p["timeout"],
        memory_budget_mb=p["memory_budget_mb"], artifacts=artifacts,
        guard=None if p.get("no_guard") else default_guard(tuple(p["constraints"])),
    )


# Spec fields each `spec_options` option sets.
_SPEC_FIELDS = {
    "workload": ("workload",), "workload_data": ("workload",),
    "space": ("space", "space_toml"), "objectives": ("objectives",),
    "constraints": ("constraints",), "no_guard": ("guard",), "sampler": ("sampler",),
    "seed": ("seed",), "device": ("device",), "trials": ("trials",), "timeout": ("timeout",),
    "memory_budget_mb": ("memory_budget_mb",), "artifacts": ("artifacts",),
}


def given_options(ctx: click.Context) -> set[str]:
    """Parameters the user set (command line or environment), not left at their default."""
    from click.core import ParameterSource

    return {name for name in ctx.params
            if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT,
                                                      ParameterSource.DEFAULT_MAP, None)}


def resumed_spec(fresh: Any, old: Any, given: set[str]) -> Any:
    """The stored spec with only the options the user gave taken from `fresh`; a given
    value that changes the study's identity is then refused by `create_or_resume`.

    A built-in space given by the name the study stored keeps the stored text: a study
    keeps the version of the space it was created with when csearch's own changes."""
    from dataclasses import replace

    from spaces import builtin_spaces

    taken = {f: getattr(fresh, f) for opt in given & _SPEC_FIELDS.keys()
             for f in _SPEC_FIELDS[opt]}
    if taken.get("space") == old.space and old.space in builtin_spaces():
        taken.pop("space_toml", None)
    return replace(old, **taken)


def prepare(p: dict[str, Any], need_context: bool = True) -> tuple[Any, Any, bool]:
    """Validate everything before anything is written; return (study, ctx, created).

    A resumed study whose budget is already spent needs no workload: ctx is then None
    (unless `need_context`), so rerunning a finished command costs no model building.
    """
    from ..runner import remaining_budget
    from ..storage import backend_of, check_sqlite, file_path, open_storage, resolve_url
    from ..study import create_or_resume, load_context, load_study, stored_spec

    url = resolve_url(p["storage"])
    spec = make_spec(p, url)  # validates every given value before anything is written
    storage = None
    if backend_of(url) == "sqlite":
        check_sqlite(url, create=True)
        path = file_path(url)
        if path is not None and path.exists():
            storage = open_storage(url, create=True)
    else:
        storage = open_storage(url, create=True)
    resumed = storage is not None and p["study_name"] in {
        s.study_name for s in storage.get_all_studies()}
    if resumed:
        old = stored_spec(load_study(storage, p["study_name"]))
        spec = resumed_spec(spec, old, given_options(click.get_current_context()))
        study, _ = create_or_resume(storage, p["study_name"], spec, None)
        if not need_context and remaining_budget(study, spec.trials) == 0:
            return study, None, False
    ctx = load_context(spec)
    if not resumed:
        _lm_plugin_defaults(p, ctx)
    if storage is None:
        storage = open_storage(url, create=True)
    study, created = create_or_resume(storage, p["study_name"], ctx.spec, ctx)
    return study, ctx, created


def _lm_plugin_defaults(p: dict[str, Any], ctx: Any) -> None:
    """A plugin (`module:factory`) is known to be a causal LM only once built: a new study
    of one whose user named no space or no objectives gets the LM ones, as `tiny-lm` and
    `causal-lm:DIR` do (`spec.workload_defaults`)."""
    from dataclasses import replace

    from objectives.lm.workload import is_lm_workload
    from spaces import load_space, parse_space

    from ..spec import LM_DEFAULT_OBJECTIVES, LM_DEFAULT_SPACE, workload_defaults
    from ..study import resolve_space

    if not is_lm_workload(ctx.workload) or workload_defaults(ctx.spec.workload)[0] == \
            LM_DEFAULT_SPACE:
        return
    spec = ctx.spec
    if not p["objectives"]:
        spec = replace(spec, objectives=LM_DEFAULT_OBJECTIVES)
    if not p["space"]:
        spec = replace(spec, space=LM_DEFAULT_SPACE,
                       space_toml=load_space(LM_DEFAULT_SPACE).source)
        ctx.space = resolve_space(parse_space(spec.space_toml, name=spec.space), ctx.workload)
    ctx.spec = spec


def stored(study: Any) -> Any:
    from ..spec import stored_spec

    return stored_spec(study)


def url_of(p: dict[str, Any]) -> str:
    from ..storage import resolve_url

    return resolve_url(p["storage"])


def info(msg: str, quiet: bool) -> None:
    if not quiet:
        click.echo(msg, err=True)


def open_target(storage: str | None, study_name: str | None = None) -> Any:
    from ..storage import load_study, open_storage, resolve_url

    st = open_storage(resolve_url(storage), create=False)
    if study_name is None:
        return st
    return load_study(st, study_name)
