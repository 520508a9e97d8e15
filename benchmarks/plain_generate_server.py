"""A plain per-request generation server, the baseline of issue 23's continuous-batching
claim: the same exported model behind FastAPI/uvicorn, one request at a time, each one
`generate`d by Hugging Face with its own KV cache (no batching across requests). It
speaks just enough of the OpenAI API for `csearch loadtest` (streamed `/v1/completions`
with token-id prompts and `stream_options.include_usage`, `/v1/models`, `/healthz`).

    python benchmarks/plain_generate_server.py --export DIR --port 8123 --threads 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from transformers.generation.streamers import BaseStreamer


class _Tokens(BaseStreamer):
    """Hands each generated token to the event loop (the first `put` is the prompt)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
        self.loop, self.queue, self.prompt_seen = loop, queue, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for t in value.flatten().tolist():
            self.loop.call_soon_threadsafe(self.queue.put_nowait, int(t))

    def end(self) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, None)


def build(export_dir: str, threads: int) -> FastAPI:
    from search.export import load

    model = load(export_dir).eval()
    lm = model.lm
    lock = threading.Lock()  # one generation at a time: the plain server
    app = FastAPI()

    def generate(ids: list[int], n: int, streamer: _Tokens) -> None:
        with lock, torch.inference_mode():
            torch.set_num_threads(threads)
            lm.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n,
                        do_sample=False, streamer=streamer, pad_token_id=0)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "plain", "object": "model"}]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> StreamingResponse:
        body = await request.json()
        n = int(body.get("max_tokens", 16))
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        threading.Thread(target=generate, args=(list(body["prompt"]), n,
                                                _Tokens(loop, queue)), daemon=True).start()

        async def stream():
            count = 0
            while (tok := await queue.get()) is not None:
                count += 1
                yield ("data: " + json.dumps({"choices": [{"index": 0, "text": str(tok)}],
                                              "system_fingerprint": "plain-v0"}) + "\n\n")
            yield "data: " + json.dumps({"choices": [], "system_fingerprint": "plain-v0",
                                         "usage": {"completion_tokens": count}}) + "\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", required=True, help="a `csearch export` directory")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    uvicorn.run(build(a.export, a.threads), host="127.0.0.1", port=a.port, log_level="warning")


if __name__ == "__main__":
    main()
