"""The report's tables as data: the Pareto trials with export commands, the study's
context, and the sensitivity pass."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from .. import attrs
from ..params import changed_params, study_groups, with_split
from ..results import is_feasible
from ..storage import redact
from ._common import TABLE_METRICS, Trials, _trials
from .data import ParetoData, collect_pareto


def export_command(study_name: str, storage_url: str | None, number: int) -> str:
    """The shell command that exports a trial (the storage password is redacted)."""
    url = redact(storage_url) if storage_url else "URL"
    return (f"csearch export --study {shlex.quote(study_name)} --storage {shlex.quote(url)} "
            f"--trial {number} -o {shlex.quote(f'export-{study_name}-{number}')}")


@dataclass
class TableData:
    """The feasible Pareto trials: one row each, with the command that exports it."""

    columns: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)


def collect_pareto_table(study: optuna.Study, trials: Trials | None = None,
                         storage_url: str | None = None,
                         pareto: ParetoData | None = None) -> TableData:
    trials = _trials(study, trials)
    pareto = pareto or collect_pareto(study, trials)
    front = set(pareto.front_numbers())
    by_number = {t.number: t for t in trials if t.number in front}
    baseline = study.user_attrs.get(attrs.BASELINE) or {}
    extra = [k for k in TABLE_METRICS
             if any(k in (by_number[n].user_attrs.get(attrs.METRICS) or {}) for n in by_number)]
    ratio = bool(baseline.get("size_mb"))
    groups = study_groups(study)
    data = TableData(columns=["number", *pareto.names, *extra,
                              *(["smaller"] if ratio else []), "params", "export"])
    for n in sorted(by_number):
        t = by_number[n]
        m = t.user_attrs.get(attrs.METRICS) or {}
        row: dict[str, Any] = {"number": n}
        row.update({k: v for k, v in zip(pareto.names, t.values)})
        row.update({k: m.get(k) for k in extra})
        if ratio:
            size = m.get("size_mb")
            row["smaller"] = baseline["size_mb"] / size if size else None
        # What the CLI's tables show: the parameters that have an effect, and the serve
        # split the trial was measured with (`sampled→served` where it was re-split).
        row["params"] = changed_params(with_split(dict(t.params),
                                                  t.user_attrs.get(attrs.SERVE_SPLIT)), groups)
        row["export"] = export_command(study.study_name, storage_url, n)
        data.rows.append(row)
    return data


@dataclass
class ContextData:
    """What the study is: spec summary, baseline metrics, environment, trial counts."""

    study: str
    storage: str | None
    spec: dict[str, Any]
    baseline: dict[str, Any]
    environment: dict[str, Any]
    states: dict[str, int]
    n_trials: int
    n_feasible: int
    n_infeasible: int
    # Trials csearch's early stop ended during recovery, and the recovery seconds that saved.
    n_early_stopped: int = 0
    seconds_saved: float = 0.0
    start_seconds: dict[str, Any] = field(default_factory=dict)  # the study start's stages

    def early_stop_line(self) -> str:
        """One line for the page and the CLI: how many trials stopped early, time saved."""
        if not self.n_early_stopped:
            return "no trial stopped early in recovery"
        return (f"{self.n_early_stopped} trial(s) stopped early in recovery, saving about "
                f"{self.seconds_saved:.0f} s of fine-tuning")


def collect_context(study: optuna.Study, trials: Trials | None = None,
                    storage_url: str | None = None) -> ContextData:
    trials = _trials(study, trials)
    states: dict[str, int] = {}
    feas = infeas = stopped = 0
    saved = 0.0
    for t in trials:
        stop = t.user_attrs.get(attrs.EARLY_STOP)
        if stop:
            stopped += 1
            saved += float(stop.get("seconds_saved", 0.0))
        states[t.state.name] = states.get(t.state.name, 0) + 1
        if t.state == TrialState.COMPLETE:
            if is_feasible(t) is False:
                infeas += 1
            else:
                feas += 1
    spec = dict(study.user_attrs.get(attrs.SPEC) or {})
    spec.pop("space_toml", None)
    return ContextData(
        study=study.study_name,
        storage=redact(storage_url) if storage_url else None,
        spec=spec,
        baseline=dict(study.user_attrs.get(attrs.BASELINE) or {}),
        environment=dict(study.user_attrs.get(attrs.ENVIRONMENT) or {}),
        states=states, n_trials=len(trials), n_feasible=feas, n_infeasible=infeas,
        n_early_stopped=stopped, seconds_saved=saved,
        start_seconds=dict(study.user_attrs.get(attrs.START_SECONDS) or {}),
    )



@dataclass
class SensitivityData:
    """Accuracy drop of each layer group compressed alone (the study's sensitivity pass)."""

    groups: list[str] = field(default_factory=list)
    probes: list[str] = field(default_factory=list)
    drops: list[list[float]] = field(default_factory=list)  # [group][probe]
    guard: float | None = None
    pinned: list[str] = field(default_factory=list)


def collect_sensitivity(study: optuna.Study, trials: Trials | None = None) -> SensitivityData:
    from ..sensitivity import pinned_groups

    sens = study.user_attrs.get(attrs.SENSITIVITY)
    if not sens:
        return SensitivityData()
    groups = list(sens["drops"])
    probes = sorted({p for d in sens["drops"].values() for p in d})
    drops = [[float(sens["drops"][g].get(p, float("nan"))) for p in probes] for g in groups]
    return SensitivityData(groups, probes, drops, sens.get("guard"), pinned_groups(sens))
