"""What one request may ask of a server: items, body bytes and time.

Over a limit is a 413 (items, bytes) or a 408 (time), in the error schema, with the limit
named. The body limit is checked before the body is read: a Content-Length above it is
refused at once, and a body without one (chunked) is counted as it streams in and refused
when the count passes the limit. A request refused that way still has its body drained
(read and dropped, up to `drain_bytes`), so the client, which is still sending, reads the
413 instead of a reset connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # FastAPI loads only where a server runs, not in `start_server`'s caller
    from ._errors import ApiError

__all__ = ["Limits", "BodyLimitMiddleware"]


@dataclass(frozen=True)
class Limits:
    max_items: int = 4096  # items in one POST /predict
    max_body_bytes: int = 16 * 2**20
    timeout_s: float = 60.0  # from the body read to the answer
    drain_bytes: int = 256 * 2**20  # a refused body is read and dropped up to this

    def __post_init__(self) -> None:
        if self.max_items < 1 or self.max_body_bytes < 1 or not self.timeout_s > 0:
            raise ValueError(f"limits must be positive: {self}")

    def too_large(self, nbytes: int | None = None) -> ApiError:
        from ._errors import ApiError

        got = f" ({nbytes} bytes)" if nbytes is not None else ""
        return ApiError(413, f"request body{got} is over the limit of {self.max_body_bytes} "
                             "bytes (max_body_bytes)", param="max_body_bytes")

    def timed_out(self) -> ApiError:
        from ._errors import ApiError

        return ApiError(408, f"request took longer than the limit of {self.timeout_s:g} s "
                             "(timeout_s)", param="timeout_s")


async def _drain(receive: Any, budget: int) -> None:
    while budget > 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return


class BodyLimitMiddleware:
    """ASGI middleware: refuse bodies over `limits.max_body_bytes` with a 413."""

    def __init__(self, app: Any, limits: Limits) -> None:
        self.app, self.limits = app, limits

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.max_body_bytes
        for key, value in scope["headers"]:
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
                if declared is not None and declared > limit:
                    await _drain(receive, self.limits.drain_bytes)
                    resp = self.limits.too_large(declared).response()
                    resp.headers["connection"] = "close"
                    await resp(scope, receive, send)
                    return
                break
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    await _drain(receive, self.limits.drain_bytes - seen)
                    raise self.limits.too_large()
            return message

        await self.app(scope, counted, send)

