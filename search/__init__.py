"""The engine: CLI, study spec, storage, runner and workers, results and export."""

from .errors import CsearchError, SpecError, StorageError, StudyNotFound, UsageError
from .export import export_trial, load
from .metrics import Constraint, Objective, parse_constraint, parse_objective
from .results import pareto_rows, study_summaries, trial_rows
from .runner import TrialObjective, count_finished, run_trials
from .spec import StudySpec
from .storage import open_storage, redact, resolve_url
from .study import Context, build_spec, create_or_resume, load_context, load_study, stored_spec

__all__ = [
    "CsearchError",
    "SpecError",
    "StorageError",
    "StudyNotFound",
    "UsageError",
    "export_trial",
    "load",
    "Constraint",
    "Objective",
    "parse_constraint",
    "parse_objective",
    "pareto_rows",
    "study_summaries",
    "trial_rows",
    "TrialObjective",
    "count_finished",
    "run_trials",
    "StudySpec",
    "open_storage",
    "redact",
    "resolve_url",
    "Context",
    "build_spec",
    "create_or_resume",
    "load_context",
    "load_study",
    "stored_spec",
]
