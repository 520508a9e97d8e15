"""`POST /v1/embeddings` for sentence-embedding versions (`minilm`): strings in, vectors out,
in OpenAI's format. The workload's own tokenizer makes the token ids, and the ids go
through the classifier path (`ClassifierHandle.predict`: the version's batching and
response cache), so a served vector is the one `search.export.load` of the same trial
computes, and the same sentence asked twice is a cache hit."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

import torch
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from objectives import Workload

from ._classifier import mount_classifier
from ._errors import ApiError

__all__ = ["is_embedding_workload", "mount_embeddings"]


def is_embedding_workload(workload: Workload) -> bool:
    """Requests are token ids that the workload's own tokenizer makes from text."""
    tok = workload.extras.get("tokenizer")
    return callable(tok) and "lm_data" not in workload.extras


class EmbeddingBody(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI's `user`, `dimensions`... are ignored
    model: str
    input: str | list[str] = Field(min_length=1)
    encoding_format: str = "float"


def _base64(vector: list[float]) -> str:
    """OpenAI's compact form (the `openai` client's default): little-endian float32."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def mount_embeddings(app: FastAPI, versions: Any, name: str) -> None:
    """`/predict` (token ids, as for any classifier) and `/v1/embeddings` (strings)."""
    mount_classifier(app, versions)
    limits = app.state.limits
    app.state.metrics.timed.add("/v1/embeddings")

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingBody) -> Response:
        if body.model != name:
            raise ApiError(404, f"The model {body.model!r} does not exist; this server serves "
                           f"{name!r}", param="model", code="model_not_found")
        if body.encoding_format not in ("float", "base64"):
            raise ApiError(400, f"encoding_format {body.encoding_format!r} is not supported; "
                           "use 'float' or 'base64'", param="encoding_format")
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        if len(texts) > limits.max_items:
            raise ApiError(413, f"{len(texts)} strings is over the limit of {limits.max_items} "
                           "per request (max_items)", param="max_items")
        if not all(texts):
            raise ApiError(400, "input holds an empty string", param="input")
        with versions.pin() as h:
            w = h.served.loaded.workload
            enc = w.extras["tokenizer"](texts, truncation=True,
                                         max_length=int(w.extras.get("max_tokens", 128)))
            items = [torch.tensor(ids, dtype=torch.long) for ids in enc["input_ids"]]
            vectors, _ = await h.predict(items)
        n_tokens = sum(len(i) for i in items)
        return JSONResponse({
            "object": "list", "model": name,
            "data": [{"object": "embedding", "index": i,
                      "embedding": _base64(v) if body.encoding_format == "base64" else v}
                     for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
        })
