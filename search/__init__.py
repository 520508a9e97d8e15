"""The engine: CLI, study spec, storage, runner and workers, results, report and export.

Names are loaded lazily: `csearch studies` or `csearch pareto` should not pay for
importing torch, which only trials, export and load need.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CsearchError": ".errors",
    "SpecError": ".errors",
    "StorageError": ".errors",
    "StudyNotFound": ".errors",
    "UsageError": ".errors",
    "export_trial": ".export",
    "load": ".export",
    "Constraint": ".metrics",
    "Objective": ".metrics",
    "parse_constraint": ".metrics",
    "parse_objective": ".metrics",
    "pareto_rows": ".results",
    "study_summaries": ".results",
    "trial_rows": ".results",
    "TrialObjective": ".runner",
    "count_finished": ".runner",
    "run_trials": ".runner",
    "StudySpec": ".spec",
    "open_storage": ".storage",
    "redact": ".storage",
    "resolve_url": ".storage",
    "Context": ".study",
    "build_spec": ".study",
    "create_or_resume": ".study",
    "load_context": ".study",
    "load_study": ".study",
    "stored_spec": ".study",
    "write_report": ".report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'search' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
