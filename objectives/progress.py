"""Progress of long stages (a workload trained at first use, the baseline, a trial's
stages) as log records on one logger. Objectives never print: whoever shows progress
(the CLI's `search/cli/progress.py`) attaches a handler; without one nothing is shown.
"""

from __future__ import annotations

import logging

__all__ = ["PROGRESS_LOGGER", "report_stage"]

PROGRESS_LOGGER = "csearch.progress"
_log = logging.getLogger(PROGRESS_LOGGER)
_log.setLevel(logging.INFO)
_log.propagate = False  # an application's root handlers do not get these
_log.addHandler(logging.NullHandler())


def report_stage(stage: str, done: int | None = None, total: int | None = None) -> None:
    """`stage` is under way; `done` of `total` steps are finished, where it counts them.
    Cheap enough to call on every step: the listener decides what to show."""
    _log.info(stage, extra={"csearch_done": done, "csearch_total": total})
