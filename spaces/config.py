"""Trial configurations: what one trial does to the model, as frozen dataclasses.

`Space.sample` builds a `Config`; `objectives` consumes it. Field names match the dotted
parameter names of the space format (`prune.amount` -> `Config.prune.amount`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

__all__ = [
    "INHERIT",
    "PER_GROUP_FIELDS",
    "split_name",
    "PRUNE_METHODS",
    "QUANT_METHODS",
    "INT4_METHODS",
    "INT4_GROUP_SIZES",
    "PruneConfig",
    "QuantConfig",
    "TrainConfig",
    "ServeConfig",
    "Config",
    "PARAM_FIELDS",
    "OMITTED",
]

PRUNE_METHODS = ("none", "magnitude", "global", "structured")
QUANT_METHODS = ("none", "int8_dynamic", "int8_weight_only", "int8_dynamic_activation",
                 "int4_weight_only", "int4_hqq", "lowbit")
# Weight-only int4 on the tinygemm kernels, and the group sizes those kernels take
# (`quant.group_size` 0 means 64 for them).
INT4_METHODS = ("int4_weight_only", "int4_hqq")
INT4_GROUP_SIZES = (32, 64, 128, 256)
# A per-group `quant.method[g]` of "inherit" follows the global `quant.method`.
INHERIT = "inherit"
# Parameters that may be set per layer group, as `quant.bits[ffn_out]`.
PER_GROUP_FIELDS = ("prune.threshold", "prune.amount", "quant.method", "quant.bits",
                    "quant.group_size")


def split_name(name: str) -> tuple[str, str | None]:
    """`quant.bits[qkv]` -> (`quant.bits`, `qkv`); `quant.bits` -> (`quant.bits`, None)."""
    if name.endswith("]") and "[" in name:
        base, _, group = name[:-1].partition("[")
        return base, group
    return name, None


@dataclass(frozen=True)
class PruneConfig:
    """`magnitude`: |w| < threshold becomes 0; `global`: the `amount` smallest |w| of all
    prunable layers become 0; `structured`: `structured_ratio` of channels are removed."""

    method: str = "none"
    threshold: float = 0.0
    amount: float = 0.0
    structured_ratio: float = 0.0


@dataclass(frozen=True)
class QuantConfig:
    """`bits` and `group_size` apply to `lowbit` (int8 methods use 8 bits per channel).
    `group_size` 0 means one scale per output channel; the int4 methods (4 bits, group
    scales and zeros) take 32, 64, 128 or 256, and read 0 as 64. `kv_bits` is the KV-cache format
    of causal-LM workloads (16: fp16; 8: int8 per token and head); others ignore it."""

    method: str = "none"
    bits: int = 8
    group_size: int = 0
    kv_bits: int = 16


@dataclass(frozen=True)
class TrainConfig:
    """Recovery fine-tuning after pruning; `kd_alpha` weights distillation from fp32.
    Off unless the space samples `train.steps` or `train.epochs`: like every default here,
    a parameter a space leaves out leaves the model as it is. `steps` (optimizer steps,
    cycling the workload's train batches) bounds a trial's cost whatever the size of the
    text; when set (not None) it takes precedence and `epochs` is ignored. `epochs` stays
    for the studies stored before `steps` existed."""

    lr: float = 1e-3
    epochs: int = 0
    steps: int | None = None
    kd_temperature: float = 2.0
    kd_alpha: float = 0.0


@dataclass(frozen=True)
class ServeConfig:
    """Serving knobs: `cache_ratio` (β) and `memory_ratio` (γ) split the memory budget."""

    batch_size: int = 32
    threads: int = 1
    cache_ratio: float = 0.0
    memory_ratio: float = 0.25


@dataclass(frozen=True)
class Config:
    prune: PruneConfig = field(default_factory=PruneConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    # Per-layer-group overrides: ((group, ((dotted field, value), ...)), ...), sorted.
    groups: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()

    @classmethod
    def from_flat(cls, values: dict[str, Any]) -> Config:
        """Build from dotted names (`{"prune.amount": 0.5, "quant.bits[qkv]": 4}`);
        missing names keep defaults, a group left out follows the global values."""
        parts: dict[str, dict[str, Any]] = {}
        per_group: dict[str, dict[str, Any]] = {}
        for name, value in values.items():
            base, group = split_name(name)
            if group is not None:
                per_group.setdefault(group, {})[base] = value
                continue
            section, _, key = base.partition(".")
            parts.setdefault(section, {})[key] = value
        base_cfg = cls()
        kw: dict[str, Any] = {s: replace(getattr(base_cfg, s), **kv) for s, kv in parts.items()}
        kw["groups"] = tuple(
            (g, tuple(sorted(over.items()))) for g, over in sorted(per_group.items())
        )
        return cls(**kw)

    def flat(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for section in fields(self):
            if section.name == "groups":
                continue
            sub = getattr(self, section.name)
            for f in fields(sub):
                out[f"{section.name}.{f.name}"] = getattr(sub, f.name)
        for group, over in self.groups:
            for name, value in over:
                out[f"{name}[{group}]"] = value
        return out

    def overrides(self, group: str | None) -> dict[str, Any]:
        for g, over in self.groups:
            if g == group:
                return dict(over)
        return {}

    def for_group(self, group: str | None) -> Config:
        """The config a layer of `group` is compressed with (global values + overrides)."""
        over = self.overrides(group)
        if not over:
            return self
        prune, quant = self.prune, self.quant
        for name, value in over.items():
            section, _, key = name.partition(".")
            if name == "quant.method" and value == INHERIT:
                continue
            if section == "prune":
                prune = replace(prune, **{key: value})
            elif section == "quant":
                quant = replace(quant, **{key: value})
        return replace(self, prune=prune, quant=quant, groups=())


def _param_fields() -> dict[str, type]:
    types: dict[str, type] = {}
    for section in fields(Config):
        if section.name == "groups":
            continue
        cls = section.default_factory  # type: ignore[misc]
        for f in fields(cls):
            value = getattr(cls(), f.name)
            # An optional count (`train.steps`, None: unset) takes ints.
            types[f"{section.name}.{f.name}"] = int if value is None else type(value)
    return types


# Every valid parameter name and the Python type of its value.
PARAM_FIELDS: dict[str, type] = _param_fields()


# What a parameter left out of a space means: its default, which leaves the model as it is.
OMITTED: dict[str, str] = {
    "prune.*": "method none: nothing pruned (threshold, amount, ratio unused)",
    "quant.*": "method none: fp32 weights (bits used only by lowbit, group_size by lowbit "
                "and int4)",
    "train.*": "steps unset, epochs 0: no fine-tuning (lr, kd_alpha, kd_temperature unused)",
    "serve.*": "batch_size 32, threads 1, cache_ratio 0 (no cache), memory_ratio 0.25; "
               "the model is unchanged",
    "name[group]": "the group follows the global value",
}
