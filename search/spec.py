"""The study spec: everything a worker needs to join a study, stored in its user attrs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

from . import attrs
from .errors import SpecError
from .metrics import Constraint, Objective, parse_constraint, parse_objective

__all__ = ["StudySpec", "SPEC_ATTR", "BASELINE_ATTR", "ENV_ATTR", "DEFAULT_OBJECTIVES",
           "DEFAULT_GUARD", "DEFAULT_SPACE", "DEFAULT_WORKLOAD", "LM_DEFAULT_OBJECTIVES",
           "LM_DEFAULT_SPACE", "QUALITY_METRICS", "SAMPLERS", "VERSION", "default_guard",
           "stored_spec", "workload_defaults"]

VERSION = "0.1.0"
SPEC_ATTR = attrs.SPEC
BASELINE_ATTR = attrs.BASELINE
ENV_ATTR = attrs.ENVIRONMENT
# Mean request latency, not the median: with a hit rate above 50 % the median request is
# a cache hit, so the median stops moving with the model's speed (README, Metrics).
DEFAULT_OBJECTIVES = ("accuracy:max", "latency_mean_ms:min", "size_mb:min")
DEFAULT_SPACE = "joint"
# What a bare `csearch run` searches: a language model under a memory budget, where the
# weights, the KV format and the cache/workspace split all compete for the same bytes
# (README, "The default study"). Causal LMs default to quality, generated tokens/s and
# the serving footprint that the budget bounds.
DEFAULT_WORKLOAD = "tiny-lm"
LM_DEFAULT_SPACE = "lm-budget"
LM_DEFAULT_OBJECTIVES = ("accuracy:max", "throughput_tps:max", "memory_mb:min")
# A study whose constraints say nothing about quality gets this one, unless `--no-guard`:
# without it "feasible" means only "fits the memory budget", and a chance-level model can
# sit on the front. LM workloads measure next-token accuracy under the same name.
DEFAULT_GUARD = "accuracy_drop<=0.01"
QUALITY_METRICS = ("accuracy", "accuracy_drop", "perplexity")
SAMPLERS = ("tpe", "refine", "nsga2", "nsga3", "gp", "random", "grid")

# Fields that define what a study *is*; resuming with any of them changed is refused.
# Budgets (trials, timeout), the device and the artifact switch may change between runs.
_IDENTITY = ("workload", "space_toml", "objectives", "constraints", "guard", "sampler",
             "seed", "memory_budget_mb")


@dataclass(frozen=True)
class StudySpec:
    workload: str
    space: str  # the reference as given (built-in name or path), for display
    space_toml: str  # the resolved space, so workers need no file
    objectives: tuple[str, ...] = DEFAULT_OBJECTIVES
    constraints: tuple[str, ...] = ()
    sampler: str = "refine"
    seed: int = 0
    device: str = "auto"
    trials: int | None = None
    timeout: float | None = None
    memory_budget_mb: float | None = None
    artifacts: str | None = None  # artifact directory, or None for no artifacts
    version: str = VERSION
    # The default quality guard the study was created with (a constraint like the others);
    # None: none (`--no-guard`, a quality constraint of the user's, or a study stored
    # before the guard existed, which resumes as it was).
    guard: str | None = None

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise SpecError(f"unknown sampler {self.sampler!r}; valid: {', '.join(SAMPLERS)}")
        if not self.objectives:
            raise SpecError("a study needs at least one objective")
        names = [o.metric for o in self.parsed_objectives()]
        if len(set(names)) != len(names):
            raise SpecError(f"objective metrics repeat: {', '.join(self.objectives)}")
        self.parsed_constraints()
        if self.trials is not None and self.trials < 0:
            raise SpecError(f"--trials must be 0 or more, got {self.trials}")
        if self.timeout is not None and self.timeout <= 0:
            raise SpecError(f"--timeout must be positive seconds, got {self.timeout:g}")
        if self.memory_budget_mb is not None and not self.memory_budget_mb > 0:
            raise SpecError(f"--memory-budget-mb must be positive, got {self.memory_budget_mb:g}")

    def parsed_objectives(self) -> list[Objective]:
        return [parse_objective(o) for o in self.objectives]

    def parsed_constraints(self) -> list[Constraint]:
        """The user's constraints, then the default guard if the study has one."""
        given = [*self.constraints, *([self.guard] if self.guard else [])]
        return [parse_constraint(c) for c in given]

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.parsed_objectives()]

    @property
    def metric_names(self) -> list[str]:
        return [o.metric for o in self.parsed_objectives()]

    def accuracy_guard(self) -> float | None:
        """The largest accuracy drop the study accepts, from its constraints."""
        for c in self.parsed_constraints():
            if c.metric == "accuracy_drop" and c.op == "<=":
                return c.bound
        return None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["objectives"] = list(self.objectives)
        d["constraints"] = list(self.constraints)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StudySpec:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["objectives"] = tuple(kw.get("objectives", DEFAULT_OBJECTIVES))
        kw["constraints"] = tuple(kw.get("constraints", ()))
        return cls(**kw)

    def differences(self, other: StudySpec) -> list[str]:
        """Identity fields that differ, described for the user."""
        out = []
        for name in _IDENTITY:
            a, b = getattr(self, name), getattr(other, name)
            if a != b:
                if name == "space_toml":
                    out.append(f"space ({other.space!r} stored, {self.space!r} given, "
                               "contents differ)")
                else:
                    out.append(f"{name} (stored {_show(b)}, given {_show(a)})")
        return out


def workload_defaults(workload: str) -> tuple[str, tuple[str, ...]]:
    """(space, objectives) of a study of `workload` whose user names neither: the LM ones
    for `tiny-lm` and `causal-lm:DIR`, the classifier ones otherwise."""
    from objectives.workloads import is_lm_ref

    if is_lm_ref(workload):
        return LM_DEFAULT_SPACE, LM_DEFAULT_OBJECTIVES
    return DEFAULT_SPACE, DEFAULT_OBJECTIVES


def default_guard(constraints: tuple[str, ...]) -> str | None:
    """The guard a study with these constraints gets: none when one of them is already
    about quality (accuracy, accuracy_drop, perplexity)."""
    if any(parse_constraint(c).metric in QUALITY_METRICS for c in constraints):
        return None
    return DEFAULT_GUARD


def _show(v: Any) -> str:
    if isinstance(v, tuple):
        return "[" + ", ".join(map(str, v)) + "]"
    return repr(v)


def stored_spec(study: optuna.Study) -> StudySpec:
    raw = study.user_attrs.get(SPEC_ATTR)
    if raw is None:
        raise SpecError(
            f"study {study.study_name!r} was not created by csearch (it has no stored spec)"
        )
    return StudySpec.from_dict(raw)
