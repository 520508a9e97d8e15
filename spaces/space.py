"""The TOML search-space format and `Space.sample(trial) -> Config`.

A space is an ordered list of `Param`s. Conditions (`when`) may only refer to parameters
declared earlier, so one pass in declaration order samples a consistent config, and
`sample(FixedTrial(params))` rebuilds any stored trial's config exactly.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .config import (
    INHERIT,
    PARAM_FIELDS,
    PER_GROUP_FIELDS,
    PRUNE_METHODS,
    QUANT_METHODS,
    Config,
    split_name,
)
from .checks import check_int4_group_sizes
from .errors import SpaceError

if TYPE_CHECKING:  # optuna is only needed by callers that sample
    from optuna.trial import BaseTrial

__all__ = ["Param", "Space", "load_space", "parse_space", "builtin_spaces", "BUILTIN_DIR"]

BUILTIN_DIR = Path(__file__).parent / "builtin"

# Valid values of each parameter: (low, high) inclusive, or a tuple of allowed choices.
_BOUNDS: dict[str, tuple[float, float] | tuple[str, ...]] = {
    "prune.method": PRUNE_METHODS,
    "prune.threshold": (0.0, math.inf),
    "prune.amount": (0.0, 0.999),
    "prune.structured_ratio": (0.0, 0.95),
    "quant.method": QUANT_METHODS,
    "quant.bits": (2, 8),
    "quant.group_size": (0, 1 << 20),
    "quant.kv_bits": (8, 16),
    "train.lr": (1e-12, 10.0),
    "train.epochs": (0, 1000),
    "train.steps": (0, 1_000_000),
    "train.kd_temperature": (1e-3, 100.0),
    "train.kd_alpha": (0.0, 1.0),
    "serve.batch_size": (1, 1 << 16),
    "serve.threads": (1, 1024),
    "serve.cache_ratio": (0.0, 1.0),
    "serve.memory_ratio": (1e-6, 1.0),
}
# Integer parameters that take only these values (give them as `choices`).
_DISCRETE: dict[str, tuple[int, ...]] = {"quant.kv_bits": (16, 8)}
_KEYS = {"type", "low", "high", "log", "step", "choices", "when"}
TEMPLATE = "*"  # `quant.bits[*]`: one parameter per layer group of the workload


def _base_and_bounds(name: str, bad: Any) -> tuple[str, Any]:
    """Validate a (possibly per-group) parameter name; return its base name and bounds."""
    base, group = split_name(name)
    if base not in PARAM_FIELDS:
        raise bad(f"unknown parameter; valid: {', '.join(PARAM_FIELDS)} "
                  f"(and {', '.join(f + '[GROUP]' for f in PER_GROUP_FIELDS)})")
    if group is None:
        return base, _BOUNDS[base]
    if base not in PER_GROUP_FIELDS:
        raise bad(f"{base!r} cannot be set per layer group; per-group parameters: "
                  f"{', '.join(PER_GROUP_FIELDS)}")
    if not group or not (group == TEMPLATE or group.replace("_", "").replace("-", "").isalnum()):
        raise bad(f"group name {group!r} must be letters, digits, '_' or '-', or '*'")
    if base == "quant.method":
        return base, QUANT_METHODS + (INHERIT,)
    return base, _BOUNDS[base]


@dataclass(frozen=True)
class Param:
    name: str
    type: str  # "float" | "int" | "categorical"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def active(self, values: dict[str, Any]) -> bool:
        return all(values.get(name) in allowed for name, allowed in self.when)

    def suggest(self, trial: BaseTrial) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def describe(self) -> str:
        if self.type == "categorical":
            text = "{" + ", ".join(map(str, self.choices)) + "}"
        else:
            text = f"{self.type} [{self.low:g}, {self.high:g}]" + (" log" if self.log else "")
        if self.when:
            text += " when " + ", ".join(f"{n} in {list(a)}" for n, a in self.when)
        return text


@dataclass(frozen=True)
class Space:
    name: str
    params: tuple[Param, ...]
    source: str = field(default="", compare=False)  # TOML text with includes resolved
    # Values of parameters the space leaves out, instead of the config defaults: a
    # workload's own (`Workload.param_defaults`); never sampled, so never stored.
    defaults: tuple[tuple[str, Any], ...] = ()

    def sample(self, trial: BaseTrial) -> Config:
        values: dict[str, Any] = {}
        for p in self.params:
            if p.active(values):
                values[p.name] = p.suggest(trial)
        declared = set(self.names())
        return Config.from_flat({**{k: v for k, v in self.defaults if k not in declared},
                                 **values})

    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def groups(self) -> set[str]:
        """Layer groups named by concrete per-group parameters (templates excluded)."""
        out = set()
        for p in self.params:
            group = split_name(p.name)[1]
            if group is not None and group != TEMPLATE:
                out.add(group)
        return out

    def has_templates(self) -> bool:
        return any(split_name(p.name)[1] == TEMPLATE for p in self.params)

    def expand(self, groups: list[str], only: Mapping[str, list[str]] | None = None) -> Space:
        """Replace each `name[*]` template by one parameter per layer group, in place;
        conditions on `other[*]` refer to the same group. A concrete parameter already in
        the space wins over its template. `only` limits a field's templates to the groups
        it can act on (`prune.amount` skips groups with nothing prunable)."""
        concrete = {p.name for p in self.params}
        out: list[Param] = []
        for p in self.params:
            base, group = split_name(p.name)
            if group != TEMPLATE:
                out.append(p)
                continue
            for g in (only or {}).get(base, groups):
                name = f"{base}[{g}]"
                if name in concrete:
                    continue
                when = tuple(
                    (c.replace(f"[{TEMPLATE}]", f"[{g}]"), allowed) for c, allowed in p.when
                )
                out.append(replace(p, name=name, when=when))
        return _rebuilt(self.name, out)

    def with_ranges(self, tables: Mapping[str, Mapping[str, Any]], where: str) -> Space:
        """Replace the range of parameters this space declares with a workload's own (a
        pretrained transformer fine-tunes at 1e-5, not 1e-3). A table for `prune.amount`
        also applies to `prune.amount[g]`; conditions stay the space's; a parameter the
        space does not declare is not added."""
        out: list[Param] = []
        for p in self.params:
            table = tables.get(p.name) or tables.get(split_name(p.name)[0])
            if table is not None:
                new = _param(p.name, {k: v for k, v in table.items() if k != "when"}, where)
                p = replace(new, when=p.when)
            out.append(p)
        return _rebuilt(self.name, out)


    def with_defaults(self, values: Mapping[str, Any], where: str) -> Space:
        """The space with `values` for the parameters it leaves out (checked like a
        space's own values); parameters it declares keep their ranges."""
        for name, value in values.items():
            def bad(msg: str, name: str = name) -> SpaceError:
                return SpaceError(f"default {name!r} {where}: {msg}")
            base, bounds = _base_and_bounds(name, bad)
            _check_value(name, value, PARAM_FIELDS[base], bounds, bad)
        return replace(self, defaults=tuple(sorted(values.items())))


def _rebuilt(name: str, params: list[Param]) -> Space:
    built = tuple(params)
    return Space(name, built, "\n".join(_param_toml(p) for p in built))


def builtin_spaces() -> dict[str, Path]:
    return {p.stem: p for p in sorted(BUILTIN_DIR.glob("*.toml"))}


def load_space(ref: str) -> Space:
    """Load a built-in space by name or a TOML file by path."""
    builtins = builtin_spaces()
    if ref in builtins:
        path = builtins[ref]
    else:
        path = Path(ref)
        if not path.is_file():
            raise SpaceError(
                f"unknown space {ref!r}: not a built-in ({', '.join(builtins)}) and no such file"
            )
    params = _load_file(path.resolve(), stack=())
    return _build(ref, params)


def parse_space(text: str, name: str = "<inline>", base_dir: Path | None = None) -> Space:
    """Parse TOML text (e.g. a spec's stored copy); includes resolve against `base_dir`."""
    data = _loads(text, name)
    params = _collect(data, name, base_dir or Path.cwd(), stack=())
    return _build(name, params)


def _build(name: str, params: dict[str, dict[str, Any]]) -> Space:
    if "train.steps" in params:  # steps take precedence: epochs would be a dead parameter
        params = {n: spec for n, spec in params.items() if n != "train.epochs"}
    built = tuple(_param(n, spec, name) for n, spec in params.items())
    seen: set[str] = set()
    for p in built:
        for cond, _ in p.when:
            if cond not in seen:
                raise SpaceError(
                    f"space {name}: parameter {p.name!r} has a condition on {cond!r}, "
                    "which must be declared before it"
                )
        seen.add(p.name)
    check_int4_group_sizes(name, built)
    source = "\n".join(_param_toml(p) for p in built)
    return Space(name=name, params=built, source=source)


def _loads(text: str, where: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpaceError(f"malformed TOML in space {where}: {e}") from e


def _load_file(path: Path, stack: tuple[Path, ...]) -> dict[str, dict[str, Any]]:
    if path in stack:
        raise SpaceError(f"space {path} includes itself (include cycle)")
    try:
        text = path.read_text()
    except OSError as e:
        raise SpaceError(f"cannot read space file {path}: {e.strerror}") from e
    return _collect(_loads(text, str(path)), str(path), path.parent, stack + (path,))


def _collect(
    data: dict[str, Any], where: str, base: Path, stack: tuple[Path, ...]
) -> dict[str, dict[str, Any]]:
    unknown = set(data) - {"include", "params"}
    if unknown:
        raise SpaceError(
            f"space {where}: unknown top-level key(s) {sorted(unknown)}; valid: include, params"
        )
    includes = data.get("include", [])
    if isinstance(includes, str):
        includes = [includes]
    merged: dict[str, dict[str, Any]] = {}
    builtins = builtin_spaces()
    for inc in includes:
        path = builtins.get(inc) or (base / inc)
        if not path.is_file():
            raise SpaceError(
                f"space {where}: include {inc!r} is not a built-in space "
                f"({', '.join(builtins)}) or a file"
            )
        merged.update(_load_file(path.resolve(), stack))
    params = data.get("params", {})
    if not isinstance(params, dict):
        raise SpaceError(f"space {where}: 'params' must be a table of parameter tables")
    for name, spec in params.items():
        if not isinstance(spec, dict):
            raise SpaceError(f"space {where}: parameter {name!r} must be a table")
        merged.pop(name, None)  # a redefinition replaces and moves to the end
        merged[name] = spec
    return merged


def _param(name: str, spec: dict[str, Any], where: str) -> Param:
    def bad(msg: str) -> SpaceError:
        return SpaceError(f"space {where}: parameter {name!r}: {msg}")

    base, bounds = _base_and_bounds(name, bad)
    extra = set(spec) - _KEYS
    if extra:
        raise bad(f"unknown key(s) {sorted(extra)}; valid: {', '.join(sorted(_KEYS))}")
    when = _when(spec.get("when", {}), bad)
    allowed = _DISCRETE.get(base)
    if allowed and any(c not in allowed for c in spec.get("choices", [None])):
        raise bad(f"takes 'choices' from {', '.join(map(str, allowed))}")
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise bad("'choices' must be a non-empty list")
        want = PARAM_FIELDS[base]
        for c in choices:
            _check_value(name, c, want, bounds, bad)
        return Param(name, "categorical", choices=tuple(choices), when=when)
    kind = spec.get("type", "float" if PARAM_FIELDS[base] is float else "int")
    if kind not in ("float", "int"):
        raise bad(f"type {kind!r} is not valid; use 'float', 'int', or give 'choices'")
    if PARAM_FIELDS[base] is str:
        raise bad("takes 'choices' (a list of names)")
    if "low" not in spec or "high" not in spec:
        raise bad("needs 'low' and 'high' (or 'choices')")
    low, high = spec["low"], spec["high"]
    for v in (low, high):
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise bad(f"bound {v!r} is not a number")
    if kind == "int" and (int(low) != low or int(high) != high):
        raise bad(f"int bounds must be whole numbers, got low={low}, high={high}")
    if low > high:
        raise bad(f"low={low} is greater than high={high}")
    lo, hi = bounds  # type: ignore[misc]
    if low < lo or high > hi:
        raise bad(f"range [{low}, {high}] is outside the valid range [{lo}, {hi}]")
    log = bool(spec.get("log", False))
    if log and low <= 0:
        raise bad(f"log scale needs low > 0, got low={low}")
    step = spec.get("step")
    if step is not None and (not isinstance(step, (int, float)) or step <= 0):
        raise bad(f"step must be a positive number, got {step!r}")
    if step is not None and log:
        raise bad("'step' and 'log' cannot be combined")
    return Param(name, kind, low=low, high=high, log=log, step=step, when=when)


def _check_value(name: str, value: Any, want: type, bounds: Any, bad: Any) -> None:
    if want is str:
        if value not in bounds:
            raise bad(f"choice {value!r} is not valid; valid: {', '.join(bounds)}")
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise bad(f"choice {value!r} is not a number")
    if want is int and int(value) != value:
        raise bad(f"choice {value!r} is not a whole number")
    lo, hi = bounds
    if not lo <= value <= hi:
        raise bad(f"choice {value!r} is outside the valid range [{lo}, {hi}]")


def _when(raw: Any, bad: Any) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if not isinstance(raw, dict):
        raise bad("'when' must be a table like { \"prune.method\" = \"magnitude\" }")
    out = []
    for cond, allowed in raw.items():
        cbase, cbounds = _base_and_bounds(
            cond, lambda msg, cond=cond: bad(f"'when' refers to unknown parameter {cond!r}: {msg}"))
        allowed = tuple(allowed) if isinstance(allowed, list) else (allowed,)
        for value in allowed:  # a typo here would switch the parameter off for good
            _check_value(cond, value, PARAM_FIELDS[cbase], cbounds,
                         lambda msg, cond=cond: bad(f"'when' on {cond!r}: {msg}"))
        out.append((cond, allowed))
    return tuple(out)


def _param_toml(p: Param) -> str:
    """Render one parameter back to TOML, so a resolved space can be stored in a spec."""

    def lit(v: Any) -> str:
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, bool):
            return "true" if v else "false"
        return repr(v)

    lines = [f'[params."{p.name}"]']
    if p.type == "categorical":
        lines.append("choices = [" + ", ".join(lit(c) for c in p.choices) + "]")
    else:
        lines += [f'type = "{p.type}"', f"low = {lit(p.low)}", f"high = {lit(p.high)}"]
        if p.log:
            lines.append("log = true")
        if p.step is not None:
            lines.append(f"step = {lit(p.step)}")
    if p.when:
        items = ", ".join(
            f'"{n}" = [' + ", ".join(lit(a) for a in allowed) + "]" for n, allowed in p.when
        )
        lines.append("when = { " + items + " }")
    return "\n".join(lines) + "\n"
