"""The HTML report of a study, laid out as `optuna.visualization`: data, figures, page.

Every `collect_*` (`data`, `tables`) returns plain data (dataclasses of lists and dicts,
no plotly), every `plot_*` (`figures`) turns that data into a plotly figure, and
`write_report` (`page`) puts the figures, a sortable table of the Pareto trials (with
their export commands) and the study's baseline and environment into one HTML file.
"""

from __future__ import annotations

from .data import (
    HypervolumeData,
    ImportanceData,
    ParallelData,
    ParetoData,
    ServingData,
    TimelineData,
    collect_hypervolume,
    collect_importances,
    collect_parallel,
    collect_pareto,
    collect_serving,
    collect_timeline,
)
from .figures import (
    plot_hypervolume,
    plot_importances,
    plot_parallel,
    plot_pareto,
    plot_sensitivity,
    plot_serving,
    plot_timeline,
)
from .memory import MemorySplitData, collect_memory_split, plot_memory_split
from .page import Report, build_report, render_html, write_report
from .served import ServedData, collect_served, plot_served
from .tables import (
    ContextData,
    SensitivityData,
    TableData,
    collect_context,
    collect_pareto_table,
    collect_sensitivity,
    export_command,
)

__all__ = [
    "ContextData",
    "HypervolumeData",
    "ImportanceData",
    "MemorySplitData",
    "ParallelData",
    "ParetoData",
    "Report",
    "SensitivityData",
    "ServedData",
    "ServingData",
    "TableData",
    "TimelineData",
    "build_report",
    "collect_context",
    "collect_hypervolume",
    "collect_importances",
    "collect_memory_split",
    "collect_parallel",
    "collect_pareto",
    "collect_pareto_table",
    "collect_sensitivity",
    "collect_served",
    "collect_serving",
    "collect_timeline",
    "export_command",
    "plot_hypervolume",
    "plot_importances",
    "plot_memory_split",
    "plot_parallel",
    "plot_pareto",
    "plot_sensitivity",
    "plot_served",
    "plot_serving",
    "plot_timeline",
    "render_html",
    "write_report",
]
