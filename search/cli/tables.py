"""Plain-text tables and value formatting for people."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["duration", "fmt_value", "feas", "params_text", "table", "pareto_table"]

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


def params_text(p: dict[str, Any]) -> str:
    return " ".join(f"{k}={fmt_value(v)}" for k, v in p.items())


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def pareto_table(rows: list[dict[str, Any]], names: list[str], baseline: dict | None) -> str:
    if not rows:
        return "(no feasible trials)"
    base_size = (baseline or {}).get("size_mb")
    body = []
    for r in rows:
        m = r["metrics"]
        ratio = f"{base_size / m['size_mb']:.1f}x" if base_size and m.get("size_mb") else "-"
        body.append([r["number"], *[fmt_value(v) for v in r["values"]], ratio,
                      fmt_value(m.get("accuracy_drop")), fmt_value(m.get("throughput_rps")),
                      params_text(r["params"])])
    return table(["#", *names, "smaller", "acc_drop", "rps", "params"], body)
