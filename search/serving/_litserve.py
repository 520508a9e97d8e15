"""The one place that reaches past LitServe's public API, each use with its reason.

`BatchedLoop` (public) collects a batch by polling its request queue in 1 ms slices until
`batch_timeout` ends, or, with a zero timeout, in a busy loop: on a 2-core machine either
costs a server its idle CPU. `DrainLoop` blocks for the first request and then takes what
else is already queued, so batches form from real concurrency and an idle server sleeps.
"""

from __future__ import annotations

import time
from queue import Empty
from typing import Any

from litserve.loops.base import _StopLoopError  # the loop's only way to end on shutdown
from litserve.loops.simple_loops import BatchedLoop
from litserve.utils import LitAPIStatus, LoopResponseType

__all__ = ["DrainLoop"]

_SENTINEL = (None, None, None, None)  # what LitServe puts on the queue to stop a worker


class DrainLoop(BatchedLoop):
    """Dynamic batching without a timer: everything queued when the worker is free."""

    def get_batch_requests(self, lit_api: Any, request_queue: Any, transport: Any
                           ) -> tuple[list, list]:
        try:
            batch = [request_queue.get(timeout=1.0)]
        except Empty:
            return [], []
        while batch[-1] != _SENTINEL and len(batch) < lit_api.max_batch_size:
            try:
                batch.append(request_queue.get_nowait())
            except Empty:
                break
        if batch[-1] == _SENTINEL:
            raise _StopLoopError()
        limit = lit_api.request_timeout
        payloads, timed_out = [], []
        for queue_id, uid, ts, x in batch:
            self.put_response(transport, queue_id, uid, (), LitAPIStatus.START,
                              LoopResponseType.REGULAR)
            if limit not in (-1, False, None) and time.monotonic() - ts > limit:
                timed_out.append((queue_id, uid))
            else:
                payloads.append((queue_id, uid, x))
        return payloads, timed_out
