"""Live progress of a study on the terminal, drawn with rich."""

from __future__ import annotations

import sys
import time
from types import SimpleNamespace
from typing import Any

from .tables import duration, fmt_value

__all__ = ["Progress"]


class Progress:
    """Progress of a study on stdout: one line per finished trial (number, state, key
    metrics, feasibility, seconds) and below it a rich live bar with finished/budget, the
    best feasible value of each objective and an ETA.

    Silent when `quiet` (``--quiet``, or stdout is not a terminal). The trials a worker
    finishes arrive through `__call__` (an Optuna callback); for `run --workers N` a
    background thread polls the database instead (`poll_in_background`). A stream that is
    not a terminal gets the trial lines and the final bar once, at `close`.
    """

    KEYS = ("accuracy", "latency_mean_ms", "size_mb", "memory_mb", "cache_hit_rate",
            "throughput_rps")
    WIDTH = 24

    def __init__(self, spec: Any, study: Any, quiet: bool, stream: Any = None,
                 clock: Any = time.perf_counter):
        import threading

        from rich.console import Console

        from ..runner import FINISHED

        self.spec, self.quiet, self.clock = spec, quiet, clock
        stream = stream if stream is not None else sys.stdout
        tty = bool(getattr(stream, "isatty", lambda: False)())
        # Not a terminal: no width to fit, so a line is never wrapped.
        self.console = Console(file=stream, highlight=False, markup=False, emoji=False,
                               **({} if tty else {"width": 10_000}))
        self.names, self.dirs = list(spec.metric_names), list(spec.directions)
        self.best: dict[str, float] = {}
        self.seen: set[int] = set()
        self.lock = threading.Lock()
        self.t0 = clock()
        self.ran = 0
        self.live: Any = None
        trials = study.get_trials(deepcopy=False, states=FINISHED) if study is not None else []
        for t in trials:
            self.seen.add(t.number)
            self._update_best(t)
        self.done = len(trials)

    def _update_best(self, t: Any) -> None:
        from ..results import is_feasible

        if t.state.name != "COMPLETE" or not t.values or is_feasible(t) is False:
            return
        for name, d, v in zip(self.names, self.dirs, t.values):
            old = self.best.get(name)
            if old is None or (v > old if d == "maximize" else v < old):
                self.best[name] = v

    def __call__(self, study: Any, t: Any) -> None:
        with self.lock:
            if t.number in self.seen:
                return
            self.seen.add(t.number)
            self.done += 1
            self.ran += 1
            self._update_best(t)
            if self.quiet:
                return
            if self.live is None:
                from rich.live import Live

                terminal = self.console.is_terminal
                self.live = Live(get_renderable=self._bar, console=self.console,
                                 auto_refresh=terminal, refresh_per_second=1,
                                 redirect_stdout=False, redirect_stderr=False)
                self.live.start()
            self.console.print(self.trial_line(t), soft_wrap=True)
            self.live.refresh()

    def trial_line(self, t: Any) -> str:
        from ..results import is_feasible

        m = t.user_attrs.get("metrics") or t.user_attrs.get("partial_metrics") or {}
        keys = list(dict.fromkeys([*self.names, *self.KEYS]))
        vals = " ".join(f"{k}={fmt_value(m[k])}" for k in keys if k in m)
        feas = {True: "feasible", False: "INFEASIBLE", None: "-"}[is_feasible(t)]
        dur = t.duration.total_seconds() if t.duration else float("nan")
        reason = t.user_attrs.get("fail_reason") or t.user_attrs.get("pruned_reason") or ""
        return (f"trial {t.number:>4} {t.state.name:<8} {feas:<10} {vals} {dur:.2f}s "
                f"{reason[:80]}").rstrip()

    def status(self) -> str:
        """What follows the bar: finished/budget, best feasible values, ETA."""
        budget = self.spec.trials
        best = " ".join(f"{k}={fmt_value(self.best[k])}" for k in self.names if k in self.best)
        best = f"best {best}" if best else "no feasible trial yet"
        if not budget:
            return f"{self.done} finished  {best}"
        left = max(0, budget - self.done)
        eta = ""
        if self.ran and left:
            eta = f"  eta {duration((self.clock() - self.t0) / self.ran * left)}"
        elif not left:
            eta = "  done"
        return f"{self.done}/{budget}  {best}{eta}"

    def _bar(self) -> Any:
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        if not self.spec.trials:
            return Text(self.status(), no_wrap=True, overflow="ellipsis")
        grid = Table.grid()
        grid.add_column()
        grid.add_column(width=self.WIDTH)
        # rich shrinks every column of a grid wider than the terminal: only the text may.
        grid.add_column(no_wrap=True, overflow="ellipsis",
                        max_width=max(1, self.console.width - self.WIDTH - 1))
        grid.add_row("[", ProgressBar(total=self.spec.trials, completed=self.done,
                                      width=self.WIDTH), "] " + self.status())
        return grid

    def close(self) -> None:
        with self.lock:
            if self.live is not None:
                self.live.stop()  # a terminal keeps the last bar; a file gets it now
                if not self.console.is_terminal:
                    self.console.line()
            self.live = None

    def poll_in_background(self, study: Any, every: float = 2.0) -> Any:
        """Feed trials finished by other processes to the progress, until `stop()`."""
        import threading

        from ..runner import FINISHED

        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(every):
                try:
                    for t in study.get_trials(deepcopy=False, states=FINISHED):
                        if t.number not in self.seen:
                            self(study, t)
                except Exception:  # a busy database: try again at the next tick
                    continue

        th = threading.Thread(target=loop, name="csearch-progress", daemon=True)
        th.start()

        def halt() -> None:
            stop.set()
            th.join(timeout=every + 5)

        return SimpleNamespace(stop=halt)
