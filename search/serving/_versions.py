"""The model version a server answers with, and the swap to another one.

`Versions(source, make, poll_s)` turns the source's model versions into Handles through
`make(Loaded) -> Handle` (one factory per workload kind: `app.HANDLES`). A Handle is any
object with an attribute `version: int` and a method `close() -> None` that releases what
it holds (threads, memory); it is closed exactly once. `close()` may run on the event
loop (when a request's unpin is the last), so it must not block: signal the Handle's
thread to end, do not join it.

- `start()` loads `source.wanted()` now (errors reach the caller) and, when the source
  follows the `production` alias, starts a thread that polls it every `poll_s` seconds.
- `current` is the Handle now serving (one reference, read atomically).
- `with versions.pin() as h:` uses `h` for a request (or a whole stream) and guarantees
  that `h` is not closed while pinned.
- A moved alias loads the new version fully *beside* the serving one, then switches
  `current` in one assignment: new requests get the new Handle, pinned requests finish on
  the old one, and the old one is closed when its last pin exits (at once if none). A
  load that fails leaves the serving version in place, and the poll tries again.
- `stop()` ends the poller and closes every Handle not pinned (the rest on unpin).

`on_swap(old, new)` (optional) runs after each switch, before `old` is closed (old is
None at the first load), e.g. to count swaps.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from ._sources import Loaded

__all__ = ["Handle", "Versions"]

log = logging.getLogger(__name__)


class Handle(Protocol):
    version: int

    def close(self) -> None: ...


class Versions:
    def __init__(self, source: Any, make: Callable[[Loaded], Handle], poll_s: float = 1.0, *,
                 device: str = "cpu",
                 on_swap: Callable[[Handle | None, Handle], None] | None = None) -> None:
        self.source, self.make, self.poll_s, self.device = source, make, poll_s, device
        self.on_swap = on_swap
        self._current: Handle | None = None
        self._pins: dict[int, int] = {}  # id(handle) -> pins
        self._retired: dict[int, Handle] = {}  # swapped out, closed on their last unpin
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def current(self) -> Handle:
        h = self._current
        if h is None:
            raise RuntimeError("Versions.start() has not loaded a model yet")
        return h

    def load(self, version: int) -> Handle:
        """A Handle for `version`, loaded now in the calling thread (not yet serving)."""
        return self.make(self.source.load(version, self.device))

    def start(self) -> Versions:
        self.swap(self.load(self.source.wanted()))
        if self.source.follows_alias and self._thread is None:
            self._thread = threading.Thread(target=self._follow, name="csearch-follow",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=60)
        with self._lock:
            current, self._current = self._current, None
            if current is not None and self._pins.get(id(current), 0):
                self._retired[id(current)] = current
                current = None
        if current is not None:
            current.close()

    @contextmanager
    def pin(self) -> Iterator[Handle]:
        with self._lock:
            h = self._current
            if h is None:
                raise RuntimeError("no model is serving (not started, or stopped)")
            key = id(h)
            self._pins[key] = self._pins.get(key, 0) + 1
        try:
            yield h
        finally:
            with self._lock:
                left = self._pins[key] - 1
                if left:
                    self._pins[key] = left
                    retired = None
                else:
                    del self._pins[key]
                    retired = self._retired.pop(key, None)
            if retired is not None:
                retired.close()

    def swap(self, new: Handle) -> None:
        """Serve `new` from now on; the old Handle closes when no request pins it."""
        with self._lock:
            old, self._current = self._current, new
            if old is not None and self._pins.get(id(old), 0):
                self._retired[id(old)] = old
                old_to_close = None
            else:
                old_to_close = old
        if self.on_swap is not None:
            self.on_swap(old, new)
        if old_to_close is not None:
            old_to_close.close()

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                wanted = self.source.wanted()
                current = self._current
                if current is None or wanted == current.version:
                    continue
                new = self.load(wanted)  # beside the serving version
                if self._stop.is_set():
                    new.close()
                    return
                self.swap(new)
                log.warning("now serving version %d", wanted)
            except Exception as e:  # a registry hiccup must not stop the serving model
                log.warning("could not follow the production alias: %s", e)
