"""Workload registry: built-ins, installed plugins (entry points) and `module:factory` refs.

A reference is only ever imported because the operator named it on the command line or
installed it as an entry point (group `csearch.workloads`); a spec read from a database
is re-resolved through the same function with `stored=True`, which resolves built-in
names and installed entry points but refuses a `module:factory` reference that the
operator has not named in this process (`allow`).
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Callable
from importlib.metadata import entry_points

from ..errors import WorkloadError
from ..workload import Workload
from .causal_lm import is_causal_lm_ref, parse_causal_lm_ref

__all__ = ["BUILTIN_WORKLOADS", "list_workloads", "resolve_factory", "load_workload", "allow",
           "is_plugin_ref", "is_lm_ref"]

ENTRY_POINT_GROUP = "csearch.workloads"

# name -> ("module:factory", description)
BUILTIN_WORKLOADS: dict[str, tuple[str, str]] = {
    "digits-cnn": (
        "objectives.workloads.digits:make_digits_workload",
        "scikit-learn 8x8 digits, 138k-parameter CNN; trains in seconds on CPU (the fast "
        "workload for tests); layer groups: conv1, conv2, fc1, fc2",
    ),
    "minilm": (
        "objectives.workloads.minilm:make_minilm_workload",
        "all-MiniLM-L6-v2 sentence embeddings (22.7M parameters); accuracy = fidelity to fp32; "
        "layer groups: embeddings, qkv, attn_out, ffn_in, ffn_out",
    ),
    "tiny-lm": (
        "objectives.workloads.tiny_lm:make_tiny_lm_workload",
        "1.6M-parameter Llama-style character LM trained on the KJV Bible (weights "
        "shipped); the default; accuracy = held-out next-token top-1; served by a "
        "KV-cache generation replay; layer groups: embeddings, attn, mlp, lm_head",
    ),
}

_loaded: dict[str, Workload] = {}
_allowed: set[str] = set()


def allow(ref: str) -> None:
    """Record that the operator named `ref` (command line, API call) in this process."""
    _allowed.add(ref)


def _entry_point(ref: str) -> str | None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == ref:
            return ep.value
    return None


# Built-in workloads served by the generation replay (so LM metrics and spaces apply).
_LM_BUILTINS = ("tiny-lm",)


def is_lm_ref(ref: str) -> bool:
    """A reference known, before loading, to name a causal LM: `tiny-lm` or
    `causal-lm:DIR` (a plugin's kind is known only once it is built)."""
    return ref in _LM_BUILTINS or is_causal_lm_ref(ref)


def is_plugin_ref(ref: str) -> bool:
    """A `module:factory` reference that is neither built in nor an installed entry point."""
    return (ref not in BUILTIN_WORKLOADS and not is_causal_lm_ref(ref)
            and _entry_point(ref) is None)


def list_workloads() -> dict[str, str]:
    """Names of built-in and installed workloads with a one-line description."""
    out = {name: desc for name, (_, desc) in BUILTIN_WORKLOADS.items()}
    out["causal-lm:MODEL_DIR"] = (
        "your local Hugging Face causal LM (llama, mistral, qwen2 or gpt2; config, "
        "safetensors, tokenizer) on your text file: --workload-data FILE")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        out.setdefault(ep.name, f"plugin {ep.value}")
    return out


def resolve_factory(ref: str, *, stored: bool = False) -> Callable[[], Workload]:
    """Turn a name or `package.module:factory` into a zero-argument factory.

    `stored=True` is for references read from a database or an export: a plugin
    reference is then imported only if the operator named it in this process (`allow`).
    """
    if is_causal_lm_ref(ref):  # a local model directory: loads weights, imports no code
        from .causal_lm import make_causal_lm_workload

        return functools.partial(make_causal_lm_workload, *parse_causal_lm_ref(ref))
    if ref in BUILTIN_WORKLOADS:
        ref = BUILTIN_WORKLOADS[ref][0]
    elif (value := _entry_point(ref)) is not None:
        ref = value
    elif stored and ":" in ref and ref not in _allowed:
        raise WorkloadError(
            f"the study's workload {ref!r} is a plugin reference read from storage; csearch "
            f"imports a plugin only when you name it: pass --workload {ref} (in Python: "
            "workload=...), or install it as an entry point in group "
            f"{ENTRY_POINT_GROUP!r}"
        )
    if ":" not in ref:
        known = ", ".join(list_workloads())
        raise WorkloadError(
            f"unknown workload {ref!r}: use one of {known}, or package.module:factory"
        )
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise WorkloadError(f"workload reference {ref!r} must look like package.module:factory")
    if os.getcwd() not in sys.path:  # like `flask --app`, resolve modules in the cwd too
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise WorkloadError(
                f"workload module {module_name!r} not found (from {ref!r}); "
                "is it installed or in the current directory?"
            ) from e
        raise WorkloadError(
            f"error while importing workload module {module_name!r}: {type(e).__name__}: {e}"
        ) from e
    except Exception as e:
        raise WorkloadError(
            f"error while importing workload module {module_name!r}: {type(e).__name__}: {e}"
        ) from e
    factory = module
    for part in attr.split("."):
        try:
            factory = getattr(factory, part)
        except AttributeError as e:
            raise WorkloadError(
                f"workload module {module_name!r} has no attribute {attr!r} (from {ref!r})"
            ) from e
    if not callable(factory):
        raise WorkloadError(f"workload factory {ref!r} is not callable")
    return factory  # type: ignore[return-value]


def load_workload(ref: str, *, stored: bool = False) -> Workload:
    """Build a workload once per process; later calls return the same object.

    `stored=True`: `ref` was read from storage, see `resolve_factory`.
    """
    if ref in _loaded and (not stored or not is_plugin_ref(ref) or ref in _allowed):
        return _loaded[ref]
    factory = resolve_factory(ref, stored=stored)
    try:
        workload = factory()
    except WorkloadError:
        raise
    except Exception as e:
        raise WorkloadError(
            f"workload factory {ref!r} raised {type(e).__name__}: {e}"
        ) from e
    if not isinstance(workload, Workload):
        raise WorkloadError(
            f"workload factory {ref!r} returned {type(workload).__name__}, "
            "not objectives.Workload"
        )
    workload.model.eval()
    _loaded[ref] = workload
    if not stored:
        allow(ref)
    return workload
