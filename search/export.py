"""Export a trial as a deployable model, and load it back without pickle.

`DIR/model.safetensors` is the trial's packed artifact (the bytes its `size_mb` counted);
`DIR/csearch.json` holds the spec, params and metrics. `load(DIR)` rebuilds the base
model from the workload reference, repeats the config's structural changes, loads the
unpacked weights and swaps in the same runtime kernels the trial was measured with.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna

from optuna.artifacts import download_artifact
from optuna.trial import FixedTrial, TrialState
from torch import nn

from objectives import (
    Workload,
    evaluate,
    load_workload,
    rebuild,
    unpack_quantized,
    unpack_state,
)
from objectives.workloads import allow as allow_workload
from spaces import Config, parse_space

from . import attrs
from .artifacts import TrialArtifactStore
from .errors import UsageError
from .spec import VERSION
from .study import Context, load_context, resolve_device, resolve_space, stored_spec

__all__ = ["export_trial", "load", "rebuild_config", "rebuild_export", "complete_trial",
           "served_split", "stored_artifact", "trial_meta", "MODEL_FILE", "META_FILE"]

MODEL_FILE = "model.safetensors"
META_FILE = "csearch.json"


def stored_artifact(spec: Any, trial: optuna.trial.FrozenTrial) -> bytes | None:
    """The trial's packed model from the study's artifact store, or None if it has none."""
    artifact_id = trial.user_attrs.get(attrs.ARTIFACT_ID)
    store_dir = spec.artifacts
    if not artifact_id or not store_dir or not os.path.isdir(store_dir):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, MODEL_FILE)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                download_artifact(artifact_store=TrialArtifactStore(store_dir),
                                  file_path=path, artifact_id=artifact_id)
        except Exception:
            return None
        return Path(path).read_bytes()


def complete_trial(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    """Trial `number` of the study, refused unless it exists and is COMPLETE."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials:
        raise UsageError(
            f"study {study.study_name!r} has no trial {number}; "
            f"valid: 0..{max(trials)}" if trials else f"study {study.study_name!r} has no trials"
        )
    trial = trials[number]
    if trial.state != TrialState.COMPLETE:
        raise UsageError(f"trial {number} is {trial.state.name}, only COMPLETE trials export "
                         "or deploy")
    return trial


def trial_meta(study: optuna.Study, trial: optuna.trial.FrozenTrial, data: bytes,
               source: str) -> dict[str, Any]:
    """What `csearch.json` holds: enough, with the packed bytes, to rebuild the model."""
    spec = stored_spec(study)
    split = served_split(trial)
    return {
        "csearch": VERSION,
        "study": study.study_name,
        "trial": trial.number,
        "workload": spec.workload,
        "space_toml": spec.space_toml,
        "params": trial.params,
        # The split the trial was measured with, when it was re-split from the sampled one.
        **({"serve_split": split} if split else {}),
        "metrics": trial.user_attrs.get(attrs.METRICS, {}),
        "baseline": study.user_attrs.get(attrs.BASELINE, {}),
        "spec": spec.to_dict(),
        "model_bytes": len(data),
        "model_source": source,
    }


def export_trial(study: optuna.Study, number: int, out_dir: str | Path,
                 device: str = "cpu", workload: str | None = None) -> dict[str, Any]:
    """Write the trial's model and metadata to `out_dir`; return the metadata.

    The workload is built only when the trial has no stored artifact (then it is
    re-evaluated); a plugin workload must then be named by `workload`."""
    trial = complete_trial(study, number)
    spec = stored_spec(study)
    data = stored_artifact(spec, trial)
    source = "artifact"
    if data is None:
        ctx: Context = load_context(spec, device=device, stored=True, workload=workload)
        # No stored artifact (artifacts off): repeat the trial's evaluation with its seed.
        config = ctx.space.sample(FixedTrial(trial.params, trial.number))
        data = evaluate(ctx.workload, config, budget_mb=ctx.budget_mb, device=ctx.device,
                        seed=trial.user_attrs.get(attrs.EVAL_SEED, spec.seed + number)).artifact
        source = "re-evaluated"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MODEL_FILE).write_bytes(data)
    meta = trial_meta(study, trial, data, source)
    (out / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return meta


def load(path: str | Path, device: str = "cpu", *, workload: str | None = None) -> nn.Module:
    """Rebuild a working `nn.Module` from an export directory (no pickle).

    A built-in or entry-point workload needs nothing more. A plugin (`module:factory`)
    workload is imported only when the caller names it: `workload="pkg.mod:factory"`
    (it must equal the exported reference), or when it was already named in this
    process (e.g. by `csearch run --workload` in the same interpreter).
    """
    path = Path(path)
    meta = json.loads((path / META_FILE).read_text())
    return rebuild_export(meta, (path / MODEL_FILE).read_bytes(), device, workload=workload)[0]


def rebuild_export(meta: dict[str, Any], data: bytes, device: str = "cpu", *,
                   workload: str | None = None) -> tuple[nn.Module, Workload]:
    """The model of `csearch.json`'s `meta` with packed weights `data`, and its workload
    (see `load` for when a plugin workload is imported)."""
    if workload is not None:
        if workload != meta["workload"]:
            raise UsageError(
                f"workload {workload!r} differs from the exported workload {meta['workload']!r}"
            )
        allow_workload(workload)
    workload_obj = load_workload(meta["workload"], stored=True)
    config = rebuild_config(meta, workload_obj)
    state = unpack_state(data)
    return rebuild(workload_obj, config, state, resolve_device(device),
                   unpack_quantized(data)), workload_obj


def served_split(trial: optuna.trial.FrozenTrial) -> dict[str, float] | None:
    """{"cache_ratio", "memory_ratio"} the trial was measured with, when the evaluation
    re-split its sampled split to fit the budget (`objectives.split`); else None."""
    split = trial.user_attrs.get(attrs.SERVE_SPLIT)
    if not split:
        return None
    return {"cache_ratio": float(split["cache_ratio"]),
            "memory_ratio": float(split["memory_ratio"])}


def rebuild_config(meta: dict[str, Any], workload: Workload) -> Config:
    """The trial's whole config (defaults of the workload included) from its metadata: what
    a server needs beyond the weights (the KV format, the serve split it was measured
    with, which is the re-split one where the evaluation re-split it)."""
    space = resolve_space(parse_space(meta["space_toml"], name="export"), workload)
    config = space.sample(FixedTrial(meta["params"]))
    split = meta.get("serve_split")
    if split:
        config = replace(config, serve=replace(config.serve, **split))
    return config
