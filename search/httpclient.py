"""A lean HTTP/1.1 client for load tests: keep-alive connections on asyncio, responses
parsed by httptools (the C parser uvicorn uses).

A load generator must cost well under the server it measures; httpx costs more CPU per
request than csearch's server does (benchmarks/RESULTS.md, issue 23), so the load test
sends through this instead. One `Connection` carries one request at a time:

    conn = await Connection.open("127.0.0.1", 8000)
    reply = await conn.request("POST", "/predict", body, on_chunk=None, timeout=30)
    reply.status, reply.body, reply.t_sent, reply.t_headers, reply.t_done

`on_chunk(data, t)` (optional) sees each piece of the body as it arrives (de-chunked),
with its `time.perf_counter()` stamp, and the body is then not kept: the hook for a
streaming client (server-sent events: `SSELines` splits the `data:` payloads). A
connection the server closed is reopened by the next request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httptools

__all__ = ["Connection", "Reply", "SSELines", "split_url"]


@dataclass
class Reply:
    status: int
    body: bytes
    t_sent: float  # perf_counter when the request was written
    t_headers: float  # ... when the status line and headers had arrived
    t_done: float  # ... when the whole response had arrived
    t_chunks: list[float] = field(default_factory=list)  # ... of each body piece


def split_url(url: str) -> tuple[str, int, str]:
    """host, port and path prefix of an http:// URL."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"{url!r} is not an http://HOST:PORT URL")
    return parts.hostname, parts.port or 80, parts.path.rstrip("/")


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future | None = None
        self.on_chunk: Callable[[bytes, float], None] | None = None
        self.body: list[bytes] = []
        self.t_headers = 0.0
        self.t_chunks: list[float] = []
        self.keep_alive = True

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(ConnectionError(f"bad HTTP response: {e}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail(ConnectionError(f"connection closed by the server{f': {exc}' if exc else ''}"))

    def _fail(self, error: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(error)

    # httptools callbacks
    def on_headers_complete(self) -> None:
        self.t_headers = time.perf_counter()
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        t = time.perf_counter()
        self.t_chunks.append(t)
        if self.on_chunk is not None:
            self.on_chunk(body, t)
        else:
            self.body.append(body)

    def on_message_complete(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(self.parser.get_status_code())


class Connection:
    """One keep-alive connection to host:port; one request at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._proto: _Protocol | None = None
        self._head = f"Host: {host}:{port}\r\n".encode()

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        conn = cls(host, port)
        await conn._connect()
        return conn

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(_Protocol, self.host, self.port)
        self._proto = proto
        return proto

    def close(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._proto = None

    async def request(self, method: str, path: str, body: bytes = b"", *,
                      content_type: str = "application/json",
                      on_chunk: Callable[[bytes, float], None] | None = None,
                      timeout: float = 30.0) -> Reply:
        """Send one request and wait for its whole response (ConnectionError, TimeoutError)."""
        p = self._proto
        if p is None or p.transport is None or not p.keep_alive:
            self.close()
            p = await self._connect()
        p.waiter = asyncio.get_running_loop().create_future()
        p.on_chunk, p.body, p.t_chunks = on_chunk, [], []
        head = (f"{method} {path} HTTP/1.1\r\n".encode() + self._head
                + (f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
                   .encode() if body or method == "POST" else b"\r\n"))
        t_sent = time.perf_counter()
        assert p.transport is not None
        p.transport.write(head + body)
        try:
            async with asyncio.timeout(timeout):
                status = await p.waiter
        except BaseException:
            self.close()  # a half-read response cannot be reused
            raise
        return Reply(status, b"".join(p.body), t_sent, p.t_headers, time.perf_counter(),
                     p.t_chunks)


class SSELines:
    """Server-sent events: feed body pieces, get the payloads of complete `data:` lines."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, data: bytes) -> list[str]:
        lines = (self._rest + data).split(b"\n")
        self._rest = lines.pop()
        return [ln[5:].strip().decode() for ln in lines if ln.startswith(b"data:")]
