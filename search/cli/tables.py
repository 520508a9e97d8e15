"""Plain-text tables and value formatting for people."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["duration", "fmt_value", "feas", "params_text", "changed_params", "table",
           "table_width", "pareto_table", "TABLE_WIDTH"]

def duration(sec: float) -> str:
    sec = int(round(sec))
    if sec < 60:
        return f"{sec}s"
    if sec < 3600:
        return f"{sec // 60}m{sec % 60:02d}s"
    return f"{sec // 3600}h{sec % 3600 // 60:02d}m"


def fmt_value(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}"
    return str(v)


def feas(v: Any) -> str:
    return "-" if v is None else ("yes" if v else "no")


# Shown for the sections of a parameter name: `quant.bits[fc1]` -> `q.bits[fc1]`.
_SECTIONS = {"prune": "p", "quant": "q", "train": "t", "serve": "s"}
TABLE_WIDTH = 120


def table_width() -> int:
    """The terminal's width on a terminal, else 120 columns."""
    import shutil
    import sys

    if sys.stdout.isatty():
        return max(60, shutil.get_terminal_size((TABLE_WIDTH, 24)).columns)
    return TABLE_WIDTH


def changed_params(p: dict[str, Any]) -> dict[str, Any]:
    """The parameters whose value differs from what leaving them out means: the config
    default for a global one, the trial's global value (or "inherit") for a per-group one.
    Without fine-tuning epochs the other `train.*` values change nothing either."""
    from spaces import INHERIT, Config, split_name

    defaults = Config().flat()
    trains = p.get("train.epochs", defaults["train.epochs"]) != 0
    out = {}
    for k, v in p.items():
        base, group = split_name(k)
        if base.startswith("train.") and not trains:
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


def params_text(p: dict[str, Any], full: bool = False) -> str:
    """`full`: every parameter as stored; else the changed ones, shortened."""
    if full:
        return " ".join(f"{k}={fmt_value(v)}" for k, v in p.items())
    short = []
    for k, v in changed_params(p).items():
        section, _, rest = k.partition(".")
        value = f"{v:.3g}" if isinstance(v, float) else str(v)
        short.append(f"{_SECTIONS.get(section, section)}.{rest}={value}")
    return " ".join(short) or "(defaults)"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def table(headers: list[str], rows: list[list[Any]], width: int | None = None,
          shrink: tuple[tuple[str, int], ...] = ()) -> str:
    """Columns padded to their widest cell. With `width`, each (column, floor) of `shrink`
    in turn is cut down, no further than floor, with an ellipsis, until the lines fit."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    if width is not None:
        over = sum(widths) + 2 * (len(widths) - 1) - width
        for name, floor in shrink:
            if name not in headers:
                continue
            i = headers.index(name)
            cut = max(0, min(over, widths[i] - max(len(name), floor)))
            widths[i] -= cut
            over -= cut
        cells = [cells[0]] + [[_cut(c, w) for c, w in zip(r, widths)] for r in cells[1:]]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def pareto_table(rows: list[dict[str, Any]], names: list[str], baseline: dict | None,
                 full: bool = False) -> str:
    """The feasible front; `full`: every parameter, however wide the lines get."""
    if not rows:
        return "(no feasible trials)"
    base_size = (baseline or {}).get("size_mb")
    body = []
    for r in rows:
        m = r["metrics"]
        ratio = f"{base_size / m['size_mb']:.1f}x" if base_size and m.get("size_mb") else "-"
        body.append([r["number"], *[fmt_value(v) for v in r["values"]], ratio,
                      fmt_value(m.get("accuracy_drop")), fmt_value(m.get("throughput_rps")),
                     params_text(r["params"], full)])
    return table(["#", *names, "smaller", "acc_drop", "rps", "params"], body,
                 None if full else table_width(), shrink=(("params", 12),))
