"""Dynamic batching on one inference thread, fair to small requests.

`Batcher(run, max_batch)` owns a thread that runs `run(units) -> results` (one result per
unit, in order) on batches of at most `max_batch` units. `await batcher.submit(units)`
hands a request's units to it from the event loop and resolves when all are done.

- No timer: the thread sleeps on a condition while nothing is queued, and a batch is
  whatever is queued when the thread is free (requests that arrive while the model runs
  form the next batch).
- A request larger than `max_batch` is cut into chunks, and the pending requests take
  turns: each batch takes from the oldest pending request first, and a request that still
  has units left goes to the back. A 1-item request that arrives during a 1,000-item one
  waits for at most the batch already running.
- `cancel(future)` (a timed-out or abandoned request) drops its units not yet run.
- `close()` finishes what is queued, then ends the thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["Batcher"]


class _Work:
    __slots__ = ("units", "next", "results", "done", "loop", "future")

    def __init__(self, units: list[Any], loop: asyncio.AbstractEventLoop,
                 future: asyncio.Future) -> None:
        self.units, self.next, self.done = units, 0, 0
        self.results: list[Any] = [None] * len(units)
        self.loop, self.future = loop, future


def _resolve(future: asyncio.Future, value: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled by a timeout meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class Batcher:
    def __init__(self, run: Callable[[list[Any]], list[Any]], max_batch: int, *,
                 name: str = "csearch-infer",
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.run, self.max_batch, self.on_batch = run, max(1, int(max_batch)), on_batch
        self._pending: deque[_Work] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, units: list[Any]) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not units:
            future.set_result([])
            return future
        with self._cond:
            if self._closing:
                raise RuntimeError("this model version is closed")
            self._pending.append(_Work(list(units), loop, future))
            self._cond.notify()
        return future

    def cancel(self, future: asyncio.Future) -> None:
        with self._cond:
            for w in self._pending:
                if w.future is future:
                    self._pending.remove(w)
                    break

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _take(self) -> list[tuple[_Work, int, int]] | None:
        """The next batch as (work, start, stop) slices, oldest request first; None: end."""
        with self._cond:
            while not self._pending:
                if self._closing:
                    return None
                self._cond.wait()
            room, taken, again = self.max_batch, [], []
            while room and self._pending:
                w = self._pending.popleft()
                stop = min(len(w.units), w.next + room)
                taken.append((w, w.next, stop))
                room -= stop - w.next
                w.next = stop
                if stop < len(w.units):
                    again.append(w)
            self._pending.extend(again)  # the rest of a large request goes to the back
            return taken

    def _loop(self) -> None:
        while (taken := self._take()) is not None:
            units = [u for w, a, b in taken for u in w.units[a:b]]
            try:
                results, error = self.run(units), None
            except Exception as e:  # every request in the batch gets it (a 500)
                results, error = None, e
            if self.on_batch is not None:
                self.on_batch(len(units))
            pos = 0
            for w, a, b in taken:
                if error is None:
                    w.results[a:b] = results[pos:pos + b - a]
                    pos += b - a
                    w.done += b - a
                    if w.done < len(w.units):  # more chunks to come
                        continue
                else:
                    self.cancel(w.future)  # its chunks still queued, if any
                w.loop.call_soon_threadsafe(_resolve, w.future, w.results, error)
