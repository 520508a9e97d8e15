"""Dynamic batching on one inference thread, fair to small requests.

`Batcher(run, max_batch)` owns a thread that runs `run(units) -> results` (one result per
unit, in order) on batches of at most `max_batch` units. `await batcher.submit(units)`
hands a request's units to it from the event loop and resolves when all are done.

- No timer: the thread sleeps on a condition while nothing is queued, and a batch is
  whatever is queued when the thread is free (requests that arrive while the model runs
  form the next batch).
- A request larger than `max_batch` is cut into chunks, and requests take turns: small
  requests (at most `max_batch` units) go first, oldest first; the rest of the batch goes
  to the large ones in rotation (a large request with units left goes to the back), and
  if a batch had no room for them the next one serves them first. So a small request
  that arrives during a 1,000-item one waits for at most the batch already running and
  one more, and a stream of small requests cannot starve a large one.
- `cancel(future)` (a timed-out or abandoned request) drops its units not yet run.
- `close()` refuses new work; the thread runs what is queued, then ends.
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


def _resolve(works: list[_Work], error: BaseException | None) -> None:
    for w in works:
        if w.future.done():  # cancelled by a timeout meanwhile
            continue
        if error is not None:
            w.future.set_exception(error)
        else:
            w.future.set_result(w.results)


class Batcher:
    def __init__(self, run: Callable[[list[Any]], list[Any]], max_batch: int, *,
                 name: str = "csearch-infer",
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.run, self.max_batch, self.on_batch = run, max(1, int(max_batch)), on_batch
        self._small: deque[_Work] = deque()  # at most max_batch units, none run yet
        self._large: deque[_Work] = deque()  # more than that, or partly run
        self._large_waited = False
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
            queue = self._small if len(units) <= self.max_batch else self._large
            queue.append(_Work(list(units), loop, future))
            self._cond.notify()
        return future

    def cancel(self, future: asyncio.Future) -> None:
        with self._cond:
            for queue in (self._small, self._large):
                for w in queue:
                    if w.future is future:
                        queue.remove(w)
                        return

    def close(self) -> None:
        """No new work; the thread ends once what is queued has run. Does not wait (the
        last unpin may run on the event loop)."""
        with self._cond:
            self._closing = True
            self._cond.notify()

    def _take(self) -> list[tuple[_Work, int, int]] | None:
        """The next batch as (work, start, stop) slices; None: closed and drained."""
        with self._cond:
            while not self._small and not self._large:
                if self._closing:
                    return None
                self._cond.wait()
            room, taken, took_large = self.max_batch, [], False
            queues = (self._small, self._large)
            if self._large_waited:  # the large ones waited a whole batch: they go first
                queues = (self._large, self._small)
            for queue in queues:
                again = []
                while room and queue:
                    w = queue.popleft()
                    took_large |= queue is self._large
                    stop = min(len(w.units), w.next + room)
                    taken.append((w, w.next, stop))
                    room -= stop - w.next
                    w.next = stop
                    if stop < len(w.units):
                        again.append(w)
                self._large.extend(again)  # the rest of a request goes to the back
            self._large_waited = bool(self._large) and not took_large
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
            pos, finished = 0, []
            for w, a, b in taken:
                if error is None:
                    w.results[a:b] = results[pos:pos + b - a]
                    pos += b - a
                    w.done += b - a
                    if w.done < len(w.units):  # more chunks to come
                        continue
                else:
                    self.cancel(w.future)  # its chunks still queued, if any
                finished.append(w)
            loops: dict[asyncio.AbstractEventLoop, list[_Work]] = {}
            for w in finished:
                loops.setdefault(w.loop, []).append(w)
            for loop, works in loops.items():  # one wake-up of each loop per batch
                loop.call_soon_threadsafe(_resolve, works, error)
