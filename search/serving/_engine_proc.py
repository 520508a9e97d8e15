"""A served LM version's engine in a process of its own, as vLLM's V1 engine core runs.

The engine thread used to share the server's GIL with the event loop: every step's Python
(scheduling, the forward's op calls) waited on HTTP work and HTTP work on it. Measured
under the trial's load (benchmarks/RESULTS.md), a served step took 0.85 ms longer than its
forward pass, against 0.11 ms in the trial's replay of the same engine. Here the engine
runs alone in its process, exactly as the replay drives it; the server only exchanges
small messages with it:

- to the engine: `("add", rid, prompt, params)`, `("abort", rid)`, `("stop",)`;
- from the engine: one message per step, `(events, stats)`, where an event is
  `(rid, "token", id)`, `(rid, "done", finish_reason)` or `(rid, "error", text)`.

Processes come from a fork server that has imported torch and the engine already, so a
new version's process (promote, rollback) starts in milliseconds; the fork server itself
starts once per server, with the first version.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import torch

from objectives.lm.engine import Engine, GenRequest, SamplingParams

from ._sources import Loaded, ServeError

__all__ = ["EngineProcess", "EngineStats"]

log = logging.getLogger(__name__)

_LOAD_TIMEOUT_S = 900.0
# What every engine process needs: the fork server imports it once.
_PRELOAD = ["search.serving._engine_boot", "torch", "objectives.lm", "objectives.workloads",
            "search.export", "search.registry", "search.serving._lm"]
_context_lock = threading.Lock()


def _context(loaded: Loaded) -> Any:
    """The fork-server context (never plain fork: a forked OpenMP runtime can hang).
    The first call starts the fork server, preloaded with the modules that define the
    first version's model and tokenizer classes too (e.g. transformers' Llama), so that
    a promoted version's process does not import them again."""
    with _context_lock:
        ctx = multiprocessing.get_context("forkserver")
        models = {type(m).__module__ for m in loaded.model.modules()}
        tok = loaded.workload.extras.get("tokenizer")
        if tok is not None:
            models.add(type(tok).__module__)
        ctx.set_forkserver_preload(_PRELOAD + sorted(models - {"__main__"}))
        return ctx


@dataclass
class EngineStats:
    """What /metrics reads, as the engine process last reported it."""

    blocks_total: int = 0
    blocks_in_use: int = 0
    running: int = 0
    waiting: int = 0
    prefix_hits: int = 0


# -- the engine process ---------------------------------------------------------------

def _stats(engine: Engine) -> tuple[int, int, int, int]:
    return engine.pool.in_use, len(engine.running), len(engine.waiting), engine.prefix_hits


def _engine_main(conn: Connection, source: Any, version: int, device: str,
                 build: Callable[[Loaded, str], tuple[Engine, int]]) -> None:
    """The engine process: load the version, say ready, then step until told to stop or
    until the server goes away (its end of the pipe closes). Ctrl-C and SIGTERM reach
    the whole process group; they are the server's to act on (it drains its streams,
    which needs this engine), so the engine ignores them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        engine, threads = build(source.load(version, device), device)
    except BaseException as e:  # reported to the server, which keeps its serving version
        conn.send(("failed", f"{type(e).__name__}: {e}"))
        return
    torch.set_num_threads(max(1, int(threads)))
    conn.send(("ready", {"n_blocks": engine.pool.n_blocks,
                         "block_size": engine.pool.block_size, "cap": engine.cap}))
    try:
        _step_loop(engine, conn)
    except (EOFError, OSError, BrokenPipeError):
        pass  # the server is gone


def _step_loop(engine: Engine, conn: Connection) -> None:
    requests: dict[int, GenRequest] = {}
    rid_of: dict[int, int] = {}  # id(GenRequest) -> rid
    last: tuple[int, int, int, int] | None = None
    while True:
        events: list[tuple[int, str, Any]] = []
        wait: float | None = None if engine.idle else 0.0
        while conn.poll(wait):  # new requests and cancellations join at this boundary
            wait = 0.0
            msg = conn.recv()
            if msg[0] == "add":
                _, rid, prompt, params = msg
                req = GenRequest(prompt, params)
                requests[rid], rid_of[id(req)] = req, rid
                engine.add(req)
            elif msg[0] == "abort":
                req = requests.pop(msg[1], None)
                if req is not None:
                    del rid_of[id(req)]
                    engine.abort(req)
                    events.append((msg[1], "done", "abort"))
            else:
                return
        if not engine.idle:
            try:
                step = engine.step()
                if step is not None:
                    events.extend((rid_of[id(s)], "token", tok) for s, tok in step.emitted)
                    for s in step.finished:
                        rid = rid_of.pop(id(s))
                        del requests[rid]
                        events.append((rid, "done", s.finish_reason))
            except Exception as e:  # a broken step fails its requests, not the server
                log.exception("engine step failed")
                for rid, req in list(requests.items()):
                    engine.abort(req)
                    events.append((rid, "error", f"{type(e).__name__}: {e}"))
                requests.clear()
                rid_of.clear()
        stats = _stats(engine)
        if events or stats != last:
            conn.send((events, stats))
            last = stats


# -- the server's side ----------------------------------------------------------------

Sink = Callable[[list[tuple[Any, tuple[str, Any]]]], None]


class EngineProcess:
    """The server's handle on one engine process. `submit` and `cancel` are thread-safe
    and cheap (one small message); a reader thread hands each step's events to
    `deliver(out)` as `[(sink, event), ...]`."""

    def __init__(self, loaded: Loaded, source: Any, device: str,
                 build: Callable[[Loaded, str], tuple[Engine, int]], deliver: Sink):
        version = loaded.version
        ctx = _context(loaded)
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_engine_main, name=f"csearch-engine-v{version}",
                                 args=(child, source, version, device, build), daemon=True)
        self._proc.start()
        child.close()
        try:
            if not self._conn.poll(_LOAD_TIMEOUT_S):
                raise ServeError(f"version {version}: the engine process did not load it "
                                 f"within {_LOAD_TIMEOUT_S:.0f} s")
            kind, info = self._conn.recv()
        except EOFError:
            self._proc.join(5)
            raise ServeError(f"version {version}: the engine process exited while loading "
                             f"(exit code {self._proc.exitcode})") from None
        except BaseException:
            self._kill()
            raise
        if kind == "failed":
            self._proc.join(5)
            raise ServeError(f"version {version}: {info}")
        self.n_blocks, self.block_size, self.cap = (
            int(info["n_blocks"]), int(info["block_size"]), int(info["cap"]))
        self.stats = EngineStats(blocks_total=self.n_blocks)
        self._deliver = deliver
        self._sinks: dict[int, Any] = {}
        self._ids = itertools.count()
        self._send_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name=f"csearch-engine-v{version}",
                                        daemon=True)
        self._reader.start()

    def _send(self, msg: tuple[Any, ...]) -> bool:
        with self._send_lock:
            try:
                self._conn.send(msg)
                return True
            except (OSError, ValueError):  # the process is gone (or closed)
                return False

    def submit(self, prompt: list[int], params: SamplingParams, sink: Any) -> int:
        rid = next(self._ids)
        self._sinks[rid] = sink
        if not self._send(("add", rid, prompt, params)):
            self._sinks.pop(rid, None)
            self._deliver([(sink, ("error", "the engine process has exited"))])
        return rid

    def cancel(self, rid: int) -> None:
        if rid in self._sinks:
            self._send(("abort", rid))

    def close(self) -> None:
        """Ask the process to stop at its next token boundary; does not wait (a version
        is closed on the event loop when its last stream ends)."""
        self._send(("stop",))

    def _read(self) -> None:
        s = self.stats
        try:
            while True:
                events, stats = self._conn.recv()
                s.blocks_in_use, s.running, s.waiting, s.prefix_hits = stats
                out = []
                for rid, kind, payload in events:
                    sink = (self._sinks.get(rid) if kind == "token"
                            else self._sinks.pop(rid, None))
                    if sink is not None:
                        out.append((sink, (kind, payload)))
                if out:
                    self._deliver(out)
        except (EOFError, OSError):
            pass
        finally:
            left, self._sinks = list(self._sinks.values()), {}
            if left:  # only when the process died under running requests
                self._deliver([(sink, ("error", "the engine process exited"))
                               for sink in left])
            s.blocks_in_use = s.running = s.waiting = 0
            self._conn.close()
            self._proc.join(30)
            if self._proc.is_alive():
                self._kill()

    def _kill(self) -> None:
        self._proc.kill()
        self._proc.join(5)
