"""Which of a trial's parameters matter, for every table that shows a config (the CLI's,
the HTML report's): the ones that have an effect and differ from leaving them out, and
the serve split the trial was measured with."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

__all__ = ["changed_params", "study_groups", "with_split"]


# The method values that use each section's other parameters (`kv_bits` is the KV
# cache's format, whatever the weights' method).
def _used_by() -> dict[str, tuple[str, ...]]:
    from spaces import INT4_METHODS  # spaces is imported when a table is drawn, not before

    return {"prune.threshold": ("magnitude",), "prune.amount": ("global",),
            "prune.structured_ratio": ("structured",), "quant.bits": ("lowbit",),
            # The int4 kernels take a group size too (0: their default).
            "quant.group_size": ("lowbit", *INT4_METHODS)}


def _methods(p: dict[str, Any], groups: Collection[str] | None, section: str,
             defaults: dict[str, Any]) -> tuple[str, dict[str, str], bool]:
    """(global method, each named group's own method, whether a layer follows the global
    method): with `groups` (the workload's layer groups) known, the global method is
    unused when every group overrides it; without, some layer may follow it."""
    from spaces import INHERIT, split_name

    key = f"{section}.method"
    glob = p.get(key, defaults[key])
    own = {g: v for k, v in p.items() for base, g in [split_name(k)]
           if g is not None and base == key and v != INHERIT}
    follows = groups is None or any(g not in own for g in groups)
    return glob, own, follows


def changed_params(p: dict[str, Any], groups: Collection[str] | None = None
                   ) -> dict[str, Any]:
    """The parameters that have an effect and whose value differs from what leaving them
    out means: the config default for a global one, the trial's global value (or
    "inherit") for a per-group one. Without fine-tuning epochs the other `train.*` values
    change nothing; a method's parameters count only where a layer uses that method
    (`quant.bits` only with `lowbit`), and a global method only where a layer group
    follows it. `groups`: the workload's layer groups, where known."""
    from spaces import INHERIT, Config, split_name

    defaults = Config().flat()
    trains = (p.get("train.steps", 0) != 0 if p.get("train.steps") is not None
              else p.get("train.epochs", defaults["train.epochs"]) != 0)
    methods = {s: _methods(p, groups, s, defaults) for s in ("prune", "quant")}
    used_by = _used_by()

    def used(base: str, group: str | None) -> bool:
        section = base.partition(".")[0]
        if section not in methods:
            return section != "train" or trains
        glob, own, follows = methods[section]
        if base == f"{section}.method":
            return group is not None or follows
        if base not in used_by:
            return True
        if group is not None:  # this group's method
            return own.get(group, glob) in used_by[base]
        # The global value: used by a group on that method without its own value.
        users = [g for g, m in own.items() if m in used_by[base]
                 and f"{base}[{g}]" not in p]
        return bool(users) or (follows and glob in used_by[base])

    out = {}
    for k, v in p.items():
        base, group = split_name(k)
        if not used(base, group):
            continue
        if group is None:
            omitted = defaults.get(k)
        else:
            omitted = p.get(base, defaults.get(base))
            if v == INHERIT:
                continue
        if v != omitted:
            out[k] = v
    return out


def with_split(p: dict[str, Any], split: dict[str, Any] | None) -> dict[str, Any]:
    """The params with the serve ratios shown as `sampled→served` where the evaluation
    re-split the trial (`serve_split`): the table says which split was measured."""
    if not split:
        return p
    out = dict(p)
    sampled = split.get("sampled") or {}
    for key in ("cache_ratio", "memory_ratio"):
        was = p.get(f"serve.{key}", sampled.get(key))
        was_text = f"{was:.3g}" if isinstance(was, float) else str(was)
        out[f"serve.{key}"] = f"{was_text}→{float(split[key]):.3g}"
    return out


def study_groups(study: Any) -> list[str] | None:
    """The workload's layer groups as the study's sensitivity pass stored them (None when
    it had none), without loading the workload."""
    weights = (study.user_attrs.get("sensitivity") or {}).get("weights")
    return list(weights) if weights else None
