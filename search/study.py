"""Create, resume and load studies; build the per-process context a worker runs with."""

from __future__ import annotations

import os
import platform
import socket
import time
import warnings
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path

import optuna
import torch
from optuna.storages import BaseStorage

from objectives import Workload, evaluate, load_workload, report_stage
from objectives.workloads import allow as allow_workload
from spaces import Config, Space, TrainConfig, builtin_spaces, load_space, parse_space

from .errors import SpecError, StudyNotFound, UsageError
from .spec import stored_spec
from .storage import load_study
from . import attrs
from .spec import VERSION, StudySpec

__all__ = [
    "Context",
    "resolve_device",
    "build_spec",
    "load_context",
    "load_study",
    "stored_spec",
    "create_or_resume",
    "baseline_config",
    "resolve_space",
    "environment",
    "workload_ref",
]


@dataclass
class Context:
    """What one worker process needs for every trial, built once per process."""

    spec: StudySpec
    workload: Workload
    space: Space
    device: torch.device
    budget_mb: float
    serve_overhead_ms: float = 0.0  # the real server's per-request cost, added in the replay
    budget_note: str = ""  # how a default budget was made up (printed at study start)
    # The serve split a default budget was made of ({"serve.cache_ratio": ...}): the
    # baseline is served with it. Empty: the workload's serving defaults.
    baseline_serve: dict[str, float] = field(default_factory=dict)
    load_seconds: float = 0.0  # building the workload (the first stage of a study's start)


def resolve_device(text: str) -> torch.device:
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {text}: CUDA is not available here; use cpu or auto")
        dev = torch.device(text)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(
                f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) here"
            )
        return dev
    raise UsageError(f"unknown device {text!r}; valid: auto, cpu, cuda, cuda:N")


def workload_ref(workload: str, data: str | None = None) -> str:
    """The reference a spec stores for `--workload W [--workload-data FILE]`: a
    `causal-lm:DIR` workload gets its checked, absolute paths, so a worker started
    anywhere rebuilds it from the spec alone."""
    from objectives.workloads.causal_lm import causal_lm_ref, is_causal_lm_ref, parse_causal_lm_ref

    if not is_causal_lm_ref(workload):
        if data is not None:
            raise UsageError(f"--workload-data {data!r} applies only to a causal-lm:MODEL_DIR "
                             f"workload, not {workload!r}")
        return workload
    if data is None:
        model_dir, data = parse_causal_lm_ref(workload)
    else:
        model_dir = workload.removeprefix("causal-lm:")
        if "?data=" in model_dir:
            raise UsageError(f"--workload {workload!r} already names its data; "
                             "drop --workload-data or the ?data= part")
    return causal_lm_ref(model_dir, data)


def build_spec(
    *,
    workload: str,
    space: str,
    objectives: tuple[str, ...],
    constraints: tuple[str, ...],
    sampler: str,
    seed: int,
    device: str,
    trials: int | None,
    timeout: float | None,
    memory_budget_mb: float | None,
    artifacts: str | None,
    guard: str | None = None,
) -> StudySpec:
    """Validate the user's choices into a spec (raises CsearchError on any mistake)."""
    resolve_device(device)
    loaded = load_space(space)
    spec_space = space if not Path(space).is_file() else str(Path(space).resolve())
    return StudySpec(
        workload=workload,
        space=spec_space,
        space_toml=loaded.source,
        objectives=tuple(objectives),
        constraints=tuple(constraints),
        sampler=sampler,
        seed=seed,
        device=device,
        trials=trials,
        timeout=timeout,
        memory_budget_mb=memory_budget_mb,
        artifacts=artifacts,
        guard=guard,
    )


def _default_budget(workload: Workload) -> tuple[float, str, dict[str, float]]:
    """The workload's own budget; else, for a causal LM, room for its fp32 weights and a
    working KV pool (`objectives.lm.budget`); else twice the fp32 weights. With how it
    was made up (for the study's start line) and the split it was made of, if any."""
    from objectives.lm.budget import lm_default_budget
    from objectives.lm.workload import is_lm_workload

    if workload.memory_budget_mb is not None:
        return float(workload.memory_budget_mb), "", {}
    if is_lm_workload(workload):
        lm = lm_default_budget(workload)
        return lm.mb, lm.describe(), lm.split()
    fp32 = sum(t.numel() * t.element_size() for t in workload.model.state_dict().values())
    return 2 * fp32 / 1e6, "twice the fp32 weights", {}


def load_context(spec: StudySpec, device: str | None = None, *, stored: bool = False,
                 workload: str | None = None) -> Context:
    """Build a worker's context. `stored=True`: the spec was read from storage, so a plugin
    workload reference is imported only if the operator names it (`workload`)."""
    if workload is not None:
        if workload != spec.workload:
            raise SpecError(
                f"--workload {workload!r} differs from the study's stored workload "
                f"{spec.workload!r}"
            )
        allow_workload(workload)
    report_stage(f"loading workload {spec.workload}")
    t0 = time.perf_counter()
    workload_obj = load_workload(spec.workload, stored=stored)
    load_seconds = time.perf_counter() - t0
    _check_metrics(spec, workload_obj)
    space = resolve_space(parse_space(spec.space_toml, name=spec.space), workload_obj)
    budget, note, split = ((spec.memory_budget_mb, "", {}) if spec.memory_budget_mb
                           else _default_budget(workload_obj))
    dev = resolve_device(device or spec.device)
    # A workload with its own serve replay (causal LMs) does not use the HTTP server's
    # per-request overhead, so it is not measured for it.
    overhead = 0.0 if workload_obj.serve else _serve_overhead_ms(workload_obj, dev,
                                                                 spec.workload)
    return Context(spec, workload_obj, space, dev, budget, serve_overhead_ms=overhead,
                   budget_note=note, baseline_serve=split, load_seconds=load_seconds)


def _serve_overhead_ms(workload: Workload, device: torch.device, ref: str) -> float:
    """Per-request overhead of the real server (`csearch serve`) for this workload's
    requests, in ms: measured once per machine and request size, then read from the cache."""
    from .serving import serve_overhead_ms

    report_stage("measuring the server's per-request overhead")
    return serve_overhead_ms(workload, str(device), ref=ref)


def _check_metrics(spec: StudySpec, workload: Workload) -> None:
    """LM metrics (`ttft_ms`, `throughput_tps`, ...) exist only for causal-LM workloads."""
    from objectives.lm.workload import is_lm_workload
    from objectives.metrics import LM_METRICS

    if is_lm_workload(workload):
        return
    used = [*spec.metric_names, *(c.metric for c in spec.parsed_constraints())]
    lm_only = [m for m in used if m in LM_METRICS]
    if lm_only:
        raise SpecError(
            f"metric {lm_only[0]!r} is measured only for causal-LM workloads (tiny-lm, "
            f"causal-lm:DIR), not for {spec.workload!r}; LM-only metrics: "
            f"{', '.join(LM_METRICS)}")


def resolve_space(space: Space, workload: Workload) -> Space:
    """The space as this workload searches it: `name[*]` templates expanded to the
    workload's layer groups (pruning ones only where something can be pruned), and, for a
    built-in space, the workload's own parameter ranges applied: a user's space file says
    what the user wants, so its ranges stand. Refuses per-group parameters that name a
    group the workload does not have."""
    from objectives.groups import group_names, prunable_groups
    from objectives.lm.workload import is_lm_workload

    if not is_lm_workload(workload) and "quant.kv_bits" in space.names():
        # No KV cache to quantize: not searched (a trial's config keeps the default).
        space = replace(space, params=tuple(p for p in space.params
                                            if p.name != "quant.kv_bits"))
    groups = group_names(workload)
    unknown = sorted(space.groups() - set(groups))
    if unknown:
        raise SpecError(
            f"space {space.name!r} sets parameters for layer group(s) {', '.join(unknown)}, "
            f"which workload {workload.name!r} does not have; its groups: {', '.join(groups)}"
        )
    if space.has_templates():
        prunable = prunable_groups(workload)
        space = space.expand(groups, {"prune.amount": prunable, "prune.threshold": prunable})
    if workload.param_ranges and space.name in builtin_spaces():
        space = space.with_ranges(workload.param_ranges, f"of workload {workload.name!r}")
    if workload.param_defaults:
        space = space.with_defaults(workload.param_defaults, f"of workload {workload.name!r}")
    return space


def baseline_config(workload: Workload | None = None,
                    serve_split: dict[str, float] | None = None) -> Config:
    """The uncompressed model, no fine-tuning, default serving (the workload's own
    serving defaults, `Workload.param_defaults`, where it has them), with `serve_split`
    (the split a default budget was made of) over them. A split that does not fit is
    re-split by the evaluation (`objectives.split`)."""
    serve = {k: v for k, v in ((workload and workload.param_defaults) or {}).items()
             if k.startswith("serve.")}
    return replace(Config.from_flat({**serve, **(serve_split or {})}),
                   train=TrainConfig(epochs=0))


def _split_attr(split: dict | None) -> dict[str, object]:
    """The baseline's re-split serve split, as a key of the stored baseline."""
    return {} if split is None else {attrs.SERVE_SPLIT: split}


def environment(device: torch.device) -> dict[str, object]:
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or platform.machine())
    return {
        "device": str(device),
        "device_name": name,
        "torch": torch.__version__,
        "optuna": metadata.version("optuna"),
        "csearch": VERSION,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "host": socket.gethostname(),
    }


def create_or_resume(
    storage: BaseStorage, name: str, spec: StudySpec, ctx: Context | None
) -> tuple[optuna.Study, bool]:
    """Return the study and whether it was created. A resume must match the stored spec.

    `ctx` is needed only to create (for the baseline); pass None to refuse creating.
    """
    existing = {s.study_name for s in storage.get_all_studies()}
    if name in existing:
        study = optuna.load_study(study_name=name, storage=storage)
        old = stored_spec(study)
        diff = spec.differences(old)
        if diff:
            raise SpecError(
                f"study {name!r} exists with a different spec: {'; '.join(diff)}. "
                "Use another --study name, or the stored settings"
            )
        merged = replace(old, trials=spec.trials, timeout=spec.timeout, device=spec.device,
                         artifacts=spec.artifacts)
        if merged != old:
            study.set_user_attr(attrs.SPEC, merged.to_dict())
        return study, False
    if ctx is None:
        raise StudyNotFound(f"no study named {name!r}")
    report_stage("measuring the baseline (the uncompressed model)")
    t0 = time.perf_counter()
    # With the study's guard: a causal LM sizes its held-out subset to it (pipeline's
    # `base_accuracy`), and the baseline, the sensitivity pass and every trial use it.
    base = evaluate(ctx.workload, baseline_config(ctx.workload, ctx.baseline_serve),
                    budget_mb=ctx.budget_mb,
                    device=ctx.device, seed=spec.seed, serve_overhead_ms=ctx.serve_overhead_ms,
                    is_baseline=True, accuracy_guard=spec.accuracy_guard())
    costs: dict[str, float] = {"load": round(ctx.load_seconds, 3),
                               "baseline": round(time.perf_counter() - t0, 3)}
    study = optuna.create_study(
        storage=storage, study_name=name, directions=spec.directions
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(spec.metric_names)
    study.set_user_attr(attrs.SPEC, spec.to_dict())
    study.set_user_attr(attrs.BASELINE, {**base.metrics, "memory_budget_mb": ctx.budget_mb,
                                         **_split_attr(base.serve_split)})
    study.set_user_attr(attrs.ENVIRONMENT, {**environment(ctx.device),
                                          "serve_overhead_ms": ctx.serve_overhead_ms})
    from .sensitivity import measure

    report_stage("sensitivity pass over the layer groups")
    t0 = time.perf_counter()
    sens = measure(ctx)  # once per study, before any worker starts
    if sens is not None:
        study.set_user_attr(attrs.SENSITIVITY, sens)
        costs["sensitivity"] = round(time.perf_counter() - t0, 3)
    held = ctx.workload._cache.get("base_measured") or {}
    costs.update({k: held[k] for k in ("heldout_windows", "heldout_total") if k in held})
    study.set_user_attr(attrs.START_SECONDS, costs)
    return study, True
