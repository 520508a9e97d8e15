"""The engine: CLI, study spec, storage, runner and workers, results and export."""

from importlib import import_module
from typing import Any

from .errors import CsearchError, SpecError, StorageError, StudyNotFound, UsageError
from .metrics import Constraint, Objective, parse_constraint, parse_objective
from .results import pareto_rows, study_summaries, trial_rows
from .spec import StudySpec
from .storage import load_study, open_storage, redact, resolve_url

# These pull in torch (seconds of import); loaded on first use so that read-only commands
# (`csearch pareto/trials/studies`) start fast.
_LAZY = {
    "export_trial": "export", "load": "export",
    "TrialObjective": "runner", "count_finished": "runner", "run_trials": "runner",
    "Context": "study", "build_spec": "study", "create_or_resume": "study",
    "load_context": "study", "stored_spec": "study",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

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
