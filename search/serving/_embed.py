"""`POST /v1/embeddings` for sentence-embedding versions (`minilm`): strings in, vectors out,
in OpenAI's format. The workload's own tokenizer and collate make the batch, so a served
vector is the one `search.export.load` of the same trial computes."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import torch
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from ._sources import Loaded

__all__ = ["EmbedHandle", "is_embedding_workload", "mount_embeddings"]

MAX_INPUTS = 256  # strings per request


def is_embedding_workload(workload: Any) -> bool:
    """A workload whose requests are tokenised text with a tokenizer to make them."""
    tok = workload.extras.get("tokenizer")
    return tok is not None and callable(tok) and "lm_data" not in workload.extras


class EmbedHandle:
    """A served embedding version: one forward pass per request, one request at a time."""

    def __init__(self, loaded: Loaded, device: torch.device | str = "cpu"):
        w = loaded.workload
        self.version = loaded.version
        self.model, self.tokenizer, self.collate = loaded.model.eval(), w.extras["tokenizer"], \
            w.batch
        self.device = torch.device(device)
        self.threads = int(loaded.serve.get("threads", 1))
        self.max_length = int(w.extras.get("max_tokens", 128))
        self._lock = threading.Lock()

    @torch.inference_mode()
    def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        items = [torch.tensor(ids, dtype=torch.long) for ids in enc["input_ids"]]
        with self._lock:
            if torch.get_num_threads() != self.threads:
                torch.set_num_threads(self.threads)
            x = self.collate(items)
            x = {k: v.to(self.device) for k, v in x.items()} if isinstance(x, dict) else \
                x.to(self.device)
            y = self.model(x)
        return y.float().cpu().tolist(), sum(len(i) for i in items)

    def close(self) -> None:
        pass


class EmbeddingBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    input: str | list[str] = Field(min_length=1)
    encoding_format: str = "float"


def _error(status: int, message: str, param: str | None = None,
           code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error",
                                   "param": param, "code": code}}, status_code=status)


def mount_embeddings(app: FastAPI, versions: Any, name: str) -> None:
    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingBody) -> Response:
        if body.model != name:
            return _error(404, f"The model {body.model!r} does not exist; this server serves "
                          f"{name!r}", "model", "model_not_found")
        if body.encoding_format != "float":
            return _error(400, f"encoding_format {body.encoding_format!r} is not supported; "
                          "use 'float'", "encoding_format")
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        if len(texts) > MAX_INPUTS:
            return _error(413, f"input holds {len(texts)} strings; at most {MAX_INPUTS} per "
                          "request", "input")
        if any(not t for t in texts):
            return _error(400, "input holds an empty string", "input")
        with versions.pin() as h:
            vectors, n_tokens = await asyncio.to_thread(h.embed, texts)
        return JSONResponse({
            "object": "list", "model": name,
            "data": [{"object": "embedding", "index": i, "embedding": v}
                     for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
        })
