"""Cross-parameter checks of a space: combinations no trial of it could run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .config import INHERIT, INT4_GROUP_SIZES, INT4_METHODS, split_name
from .errors import SpaceError

if TYPE_CHECKING:
    from .space import Param

__all__ = ["check_int4_group_sizes"]


def _methods(by_name: dict[str, Param], group: str | None) -> set[object]:
    """Quantizers a layer of `group` (None: the global one) can get; a group that has
    no method of its own, or may inherit, can get the global ones."""
    own = by_name.get("quant.method" if group is None else f"quant.method[{group}]")
    out = set(own.choices) if own is not None else set()
    glob = by_name.get("quant.method")
    if group is not None and (own is None or INHERIT in out) and glob is not None:
        out |= set(glob.choices)
    return out


def _int4(values: set[object]) -> bool:
    return any(v in INT4_METHODS for v in values)


def check_int4_group_sizes(where: str, params: Sequence[Param]) -> None:
    """A `quant.group_size` that can take a size no int4 kernel has while a layer runs
    int4 (its own method, or a group's int4 inheriting the global group size) is an
    error of the space, not a failed trial."""
    by_name = {p.name: p for p in params}
    per_group_int4 = any(split_name(p.name)[0] == "quant.method"
                         and split_name(p.name)[1] is not None and _int4(set(p.choices))
                         for p in params)
    for p in params:
        base, group = split_name(p.name)
        if base != "quant.group_size":
            continue
        if p.type == "categorical":
            bad = [str(v) for v in p.choices if v != 0 and v not in INT4_GROUP_SIZES]
        else:
            bad = [f"{p.low:g}..{p.high:g}"]
        if not bad:
            continue
        method = "quant.method" if group is None else f"quant.method[{group}]"
        cond = dict(p.when).get(method)
        admitted = _methods(by_name, group) if cond is None else (
            set(cond) | (_methods(by_name, None) if INHERIT in cond else set()))
        if (_int4(admitted) and _int4(_methods(by_name, group))) or (
                group is None and per_group_int4):
            raise SpaceError(
                f"space {where}: {p.name!r} can be {', '.join(bad)} while a layer runs "
                f"{' or '.join(INT4_METHODS)}, whose kernels take group sizes "
                f"{', '.join(map(str, INT4_GROUP_SIZES))} (0: 64); limit its choices "
                "to those")
