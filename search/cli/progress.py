"""Progress of a study: a live bar on a terminal, plain or JSON lines anywhere else.

Three things are reported: finished trials (an Optuna callback, or a thread polling the
database for `run --workers N`), long stages (the `csearch.progress` log records that
`objectives.report_stage` writes: a workload trained at first use, the baseline, each
trial's stages) and notes (`study created`, the summary).

Written for logs as much as for people: on a terminal the bar is redrawn only when its
text changes and at most once a second (a terminal recorded by `script` gets no stream of
identical frames); elsewhere every finished trial is one line, and a running stage at
most one line every 10 s, never the same line twice. The ETA comes from finished trials
only, so it does not grow while a trial runs.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
import time
from types import SimpleNamespace
from typing import Any

from .tables import broken_text, duration, fmt_value

__all__ = ["Progress", "progress_mode"]

MODES = ("quiet", "tty", "lines", "json")


def progress_mode(quiet: bool, log_format: str, stream: Any = None) -> str:
    """quiet; json (`--log-format json`); tty (stdout is a terminal); else lines."""
    if quiet:
        return "quiet"
    if log_format == "json":
        return "json"
    stream = stream if stream is not None else sys.stdout
    return "tty" if bool(getattr(stream, "isatty", lambda: False)()) else "lines"


class _Listener(logging.Handler):
    def __init__(self, progress: Progress):
        super().__init__(logging.INFO)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.progress.stage(record.getMessage(), getattr(record, "csearch_done", None),
                                getattr(record, "csearch_total", None))
        except Exception:  # progress must never break the work it reports on
            self.handleError(record)


class Progress:
    """See the module docstring. `start(spec, study)` once the study exists; `close()` at
    the end. Until `start`, only stages and notes are reported."""

    # Metrics a trial line shows after the objectives: classifiers, then language models.
    KEYS = ("accuracy", "accuracy_drop", "latency_mean_ms", "size_mb", "memory_mb",
            "cache_hit_rate")
    LM_KEYS = ("accuracy", "accuracy_drop", "perplexity", "ttft_ms", "tpot_ms",
               "throughput_tps", "size_mb", "memory_mb")
    STAGE_EVERY = 10.0  # seconds between stage lines in a log
    REDRAW_EVERY = 1.0  # seconds between redraws of the bar
    WIDTH = 24

    def __init__(self, mode: str = "lines", stream: Any = None, err: Any = None,
                 clock: Any = time.monotonic):
        if mode not in MODES:
            raise ValueError(f"unknown progress mode {mode!r}; valid: {', '.join(MODES)}")
        self.mode, self.clock = mode, clock
        self.stream = stream if stream is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.lock = threading.RLock()
        self.spec: Any = None
        self.names: list[str] = []
        self.dirs: list[str] = []
        self.best: dict[str, float] = {}
        self.seen: set[int] = set()
        self.done = self.ran = 0
        self.t0 = clock()
        self.eta_s: float | None = None  # at the last finished trial
        self.current = ""  # the stage under way
        self._last_line_t = -math.inf
        self._last_stage_line = ""
        self._drawn = ""
        self._drawn_t = -math.inf
        self.frames = 0  # bars drawn on the terminal
        self._live: Any = None
        self._listener: _Listener | None = None
        self._stage: tuple[str, int | None, int | None] = ("", None, None)
        self._ticker: Any = None
        self.console: Any = None
        if mode == "tty":
            from rich.console import Console

            self.console = Console(file=self.stream, highlight=False, markup=False,
                                   emoji=False)

    @property
    def quiet(self) -> bool:
        return self.mode == "quiet"

    # --- set-up ------------------------------------------------------------------------

    def listen(self) -> Progress:
        """Show the `csearch.progress` stage records of this process until `close`."""
        from objectives.progress import PROGRESS_LOGGER

        if self._listener is None and self.mode != "quiet":
            self._listener = _Listener(self)
            logging.getLogger(PROGRESS_LOGGER).addHandler(self._listener)
            self._ticker = self._every(1.0, self._locked_tick)
        return self

    def _locked_tick(self) -> None:
        with self.lock:
            self._tick()

    def start(self, spec: Any, study: Any) -> Progress:
        """Count the study's finished trials; ETA and rates start from here."""
        from ..runner import FINISHED

        with self.lock:
            self.spec = spec
            self.names, self.dirs = list(spec.metric_names), list(spec.directions)
            trials = study.get_trials(deepcopy=False, states=FINISHED) if study is not None \
                else []
            for t in trials:
                self.seen.add(t.number)
                self._update_best(t)
            self.done = len(trials)
            self.t0 = self.clock()
            self.current = ""
            self._draw(force=True)
        return self

    # --- events ------------------------------------------------------------------------

    def note(self, message: str) -> None:
        """A one-off message (created, resuming, summary): stderr, or a JSON line."""
        if self.mode == "quiet":
            return
        if self.mode == "json":
            self._json({"event": "note", "message": message})
        else:
            print(message, file=self.err, flush=True)
            self._last_line_t = self.clock()

    def stage(self, text: str, done: int | None = None, total: int | None = None) -> None:
        """A long stage is under way (`done` of `total` steps, where it counts them)."""
        with self.lock:
            self.current = f"{text} {done}/{total}" if total else text
            self._stage = (text, done, total)
            self._tick()

    def _tick(self) -> None:
        """Show what changed, as often as the mode allows (also called every second)."""
        if self.mode == "tty":
            self._draw()
            return
        line = self.current
        if self.mode == "quiet" or not line or line == self._last_stage_line:
            return
        if self.clock() - self._last_line_t < self.STAGE_EVERY:
            return  # shown by a later tick if it is still under way
        self._last_stage_line = line
        if self.mode == "json":
            text, done, total = self._stage
            self._json({"event": "stage", "stage": text, "done": done, "total": total,
                        "elapsed_s": round(self.clock() - self.t0, 1)})
        else:
            self._line(line)

    def __call__(self, study: Any, t: Any) -> None:
        """Optuna callback: trial `t` finished."""
        with self.lock:
            if t.number in self.seen:
                return
            self.seen.add(t.number)
            self.done += 1
            self.ran += 1
            self._update_best(t)
            budget = self.spec.trials if self.spec is not None else None
            if budget:
                left = max(0, budget - self.done)
                self.eta_s = (self.clock() - self.t0) / self.ran * left
            self.current = ""
            if self.mode == "quiet":
                return
            if self.mode == "json":
                self._json(self.trial_event(t))
            elif self.mode == "lines":
                self._line(f"{self.trial_line(t)}  [{self._count()}]")
            else:
                self._start_live()
                self.console.print(self.trial_line(t), soft_wrap=True)
                self._draw(force=True)

    # --- text ---------------------------------------------------------------------------

    def _keys(self, m: dict[str, Any]) -> list[str]:
        extra = self.LM_KEYS if "throughput_tps" in m else self.KEYS
        return list(dict.fromkeys([*self.names, *extra]))

    def trial_line(self, t: Any) -> str:
        from ..results import is_feasible, trial_row

        row = trial_row(t)
        m = t.user_attrs.get("metrics") or t.user_attrs.get("partial_metrics") or {}
        vals = " ".join(f"{k}={fmt_value(m[k])}" for k in self._keys(m) if k in m)
        feas = {True: "feasible", False: "INFEASIBLE", None: "-"}[is_feasible(t)]
        dur = t.duration.total_seconds() if t.duration else float("nan")
        why = row.get("reason") or broken_text(row)
        return f"trial {t.number:>4} {t.state.name:<8} {feas:<10} {vals} {dur:.2f}s {why[:100]}" \
            .rstrip()

    def trial_event(self, t: Any) -> dict[str, Any]:
        from ..results import trial_row

        row = trial_row(t)
        keep = ("number", "state", "feasible", "values", "metrics", "broken", "duration_s")
        return {"event": "trial", **{k: row.get(k) for k in keep},
                **({"reason": row["reason"]} if "reason" in row else {}),
                "finished": self.done, "budget": self.spec.trials if self.spec else None,
                "eta_s": None if self.eta_s is None else round(self.eta_s, 1)}

    def _count(self) -> str:
        budget = self.spec.trials if self.spec is not None else None
        if not budget:
            return f"{self.done} finished"
        eta = "done" if self.done >= budget else (
            f"eta {duration(self.eta_s)}" if self.eta_s is not None else "")
        return f"{self.done}/{budget} {eta}".rstrip()

    def status(self) -> str:
        """What follows the bar: finished/budget and ETA, the stage under way, then the
        best feasible values (the part a narrow terminal cuts)."""
        if self.spec is None:
            return self.current
        best = " ".join(f"{k}={fmt_value(self.best[k])}" for k in self.names if k in self.best)
        best = f"best {best}" if best else "no feasible trial yet"
        stage = f"{self.current} | " if self.current else ""
        return f"{self._count()} | {stage}{best}"

    def _update_best(self, t: Any) -> None:
        from ..results import is_feasible

        if t.state.name != "COMPLETE" or not t.values or is_feasible(t) is False:
            return
        for name, d, v in zip(self.names, self.dirs, t.values):
            old = self.best.get(name)
            if old is None or (v > old if d == "maximize" else v < old):
                self.best[name] = v

    # --- output -------------------------------------------------------------------------

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)
        self._last_line_t = self.clock()

    def _json(self, obj: dict[str, Any]) -> None:
        print(json.dumps(obj, default=str), file=self.stream, flush=True)
        self._last_line_t = self.clock()

    def _start_live(self) -> None:
        if self._live is None:
            from rich.live import Live

            self._live = Live(self._bar(self.status()), console=self.console,
                              auto_refresh=False, redirect_stdout=False,
                              redirect_stderr=False)
            self._live.start()
            self._drawn, self._drawn_t = self._visible(), self.clock()
            self.frames += 1

    def _visible(self) -> str:
        """The part of the status the terminal shows: a change past the cut would only
        redraw the same line."""
        text = self.status()
        if self.console is not None and self.spec is not None and self.spec.trials:
            text = text[:max(1, self.console.width - self.WIDTH - 3)]
        return text

    def _draw(self, force: bool = False) -> None:
        """Redraw the bar if its text changed, and (unless `force`) not within a second."""
        if self.mode != "tty":
            return
        text = self._visible()
        if not text or text == self._drawn:
            return
        if not force and self.clock() - self._drawn_t < self.REDRAW_EVERY:
            return
        if self._live is None:
            self._start_live()  # draws the current text
            return
        self._live.update(self._bar(self.status()), refresh=True)
        self._drawn, self._drawn_t = text, self.clock()
        self.frames += 1

    def _bar(self, text: str) -> Any:
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        if self.spec is None or not self.spec.trials:
            return Text(text, no_wrap=True, overflow="ellipsis")
        grid = Table.grid()
        grid.add_column()
        grid.add_column(width=self.WIDTH)
        # rich shrinks every column of a grid wider than the terminal: only the text may.
        grid.add_column(no_wrap=True, overflow="ellipsis",
                        max_width=max(1, self.console.width - self.WIDTH - 1))
        grid.add_row("[", ProgressBar(total=self.spec.trials, completed=self.done,
                                      width=self.WIDTH), "] " + text)
        return grid

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.stop()
            self._ticker = None
        with self.lock:
            if self._listener is not None:
                from objectives.progress import PROGRESS_LOGGER

                logging.getLogger(PROGRESS_LOGGER).removeHandler(self._listener)
                self._listener = None
            if self._live is not None:
                self.current = ""
                if self.spec is None:  # only stages were shown: none is under way now
                    from rich.text import Text

                    self._live.update(Text(""), refresh=True)
                self._draw(force=True)
                self._live.stop()  # the terminal keeps the last bar
            self._live = None

    def poll_in_background(self, study: Any, every: float = 2.0) -> Any:
        """Feed trials finished by other processes to the progress, until `stop()`."""
        from ..runner import FINISHED

        def poll() -> None:
            for t in study.get_trials(deepcopy=False, states=FINISHED):
                if t.number not in self.seen:
                    self(study, t)

        return self._every(every, poll)

    @staticmethod
    def _every(seconds: float, fn: Any) -> Any:
        """Call `fn` every `seconds` on a daemon thread until `stop()`; an error (a busy
        database) waits for the next tick."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(seconds):
                try:
                    fn()
                except Exception:
                    continue

        th = threading.Thread(target=loop, name="csearch-progress", daemon=True)
        th.start()

        def halt() -> None:
            stop.set()
            th.join(timeout=seconds + 5)

        return SimpleNamespace(stop=halt)
