"""Plain-text tables and value formatting for people."""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

from ..params import changed_params, study_groups, with_split

__all__ = ["duration", "fmt_value", "feas", "broken_text", "params_text", "changed_params", "table",
           "table_width", "pareto_table", "study_groups", "with_split", "TABLE_WIDTH"]

def duration(sec: float) -> str:
    sec = int(round(sec))
    if sec < 60:
        return f"{sec}s"
    if sec < 3600:
        return f"{sec // 60}m{sec % 60:02d}s"
    return f"{sec // 3600}h{sec % 3600 // 60:02d}m"


def fmt_value(v: Any) -> str:
    """Four significant digits, always positional: 10640 and 0.00012, never 1.064e+04."""
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        a = abs(v)
        if a == 0 or 1e-4 <= a < 1e4:
            return f"{v:.4g}"
        if a >= 1e4:
            return f"{v:.0f}"
        digits = 3 - math.floor(math.log10(a))
        return f"{v:.{digits}f}".rstrip("0")
    return str(v)


def broken_text(row: dict[str, Any], short: bool = False) -> str:
    """`breaks accuracy_drop<=0.01 (accuracy_drop=0.887, 0.877 over)` for a trial row's
    broken constraints (`short`: `breaks accuracy_drop<=0.01 by 0.877`); empty when it
    breaks none."""
    if short:
        return "; ".join(f"breaks {b['constraint']} by {fmt_value(b['by'])}"
                         for b in row.get("broken") or ())
    parts = []
    for b in row.get("broken") or ():
        value = f"{b['metric']}={fmt_value(b['value'])}, " if b.get("value") is not None else ""
        unit = " MB" if b["constraint"] == "memory_budget" else ""
        side = "short" if ">=" in b["constraint"] else "over"
        parts.append(f"{b['constraint']} ({value}{fmt_value(b['by'])}{unit} {side})")
    return f"breaks {'; '.join(parts)}" if parts else ""


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


def params_text(p: dict[str, Any], full: bool = False,
                groups: Collection[str] | None = None,
                split: dict[str, Any] | None = None) -> str:
    """`full`: every parameter as stored; else the changed ones that have an effect
    (see `changed_params`), shortened. With `split` (a trial's `serve_split`), the serve
    ratios show the split it was measured with."""
    p = with_split(p, split)
    if full:
        return " ".join(f"{k}={fmt_value(v)}" for k, v in p.items())
    short = []
    for k, v in changed_params(p, groups).items():
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


# Shown after the objectives in a front: what a reader checks next. No `throughput_rps`:
# for a classifier it is mostly the front end's modelled cap (1000 / serve_overhead_ms),
# the same for every trial, not a measurement of the model.
_FRONT_EXTRAS = ("accuracy_drop", "speedup")
_LM_FRONT_EXTRAS = ("accuracy_drop", "perplexity", "ttft_ms", "throughput_tps")


def pareto_table(rows: list[dict[str, Any]], names: list[str], baseline: dict | None,
                 full: bool = False, groups: Collection[str] | None = None) -> str:
    """The feasible front; `full`: every parameter, however wide the lines get. A language
    model's front shows its own metrics (TTFT, tokens/s, perplexity). `groups`: the
    workload's layer groups, where known (see `changed_params`)."""
    if not rows:
        return "(no feasible trials)"
    base_size = (baseline or {}).get("size_mb")
    lm = any("throughput_tps" in r["metrics"] for r in rows)
    extras = [k for k in (_LM_FRONT_EXTRAS if lm else _FRONT_EXTRAS) if k not in names
              and any(k in r["metrics"] for r in rows)]
    body = []
    for r in rows:
        m = r["metrics"]
        ratio = f"{base_size / m['size_mb']:.1f}x" if base_size and m.get("size_mb") else "-"
        body.append([r["number"], *[fmt_value(v) for v in r["values"]], ratio,
                     *[fmt_value(m.get(k)) for k in extras],
                     params_text(r["params"], full, groups, split=r.get("serve_split"))])
    return table(["#", *names, "smaller", *extras, "params"], body,
                 None if full else table_width(), shrink=(("params", 12),))
