"""`search.httpclient` against a real uvicorn server on a free 127.0.0.1 port: keep-alive
requests, a server-sent-events stream timed chunk by chunk (what an LM load test reads),
and a reconnect after the server closes the connection."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from search.httpclient import Connection, SSELines
from search.serving import free_port


def _app() -> FastAPI:
    app = FastAPI()

    @app.post("/echo")
    async def echo(body: dict) -> dict:
        return body

    @app.get("/close")
    async def close() -> dict:
        return {"bye": True}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def events():
            for i in range(3):
                yield f'data: {{"token": {i}}}\n\n'
                await asyncio.sleep(0.05)
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.middleware("http")
    async def close_on_request(request, call_next):
        response = await call_next(request)
        if request.url.path == "/close":
            response.headers["connection"] = "close"
        return response

    return app


@pytest.fixture(scope="module")
def server():
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(_app(), host="127.0.0.1", port=port,
                                       log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield port
    srv.should_exit = True
    t.join(10)


def test_keep_alive_requests_stream_and_reconnect(server):
    async def main():
        conn = await Connection.open("127.0.0.1", server)
        try:
            first = await conn.request("POST", "/echo", b'{"a": 1}')
            second = await conn.request("POST", "/echo", b'{"b": 2}')
            assert (first.status, first.body, second.body) == (200, b'{"a":1}', b'{"b":2}')
            assert first.t_sent <= first.t_headers <= first.t_done

            lines, seen = SSELines(), []
            reply = await conn.request("GET", "/stream", on_chunk=lambda data, t: seen.append(
                (t, lines.feed(data))))
            payloads = [p for _, ps in seen for p in ps]
            assert reply.status == 200 and reply.body == b""  # streamed to the hook
            assert payloads == ['{"token": 0}', '{"token": 1}', '{"token": 2}', "[DONE]"]
            times = [t for t, ps in seen if ps]
            assert reply.t_headers <= times[0] and times[-1] - times[0] >= 0.1  # as sent

            assert (await conn.request("GET", "/close")).status == 200  # server closes
            again = await conn.request("POST", "/echo", b'{"c": 3}')  # a new connection
            assert again.body == b'{"c":3}'
        finally:
            conn.close()

    asyncio.run(main())
