"""The LitServe API of one model name: runs in LitServe's inference worker process.

The worker owns the served model, its response cache and the version it answers with; a
background thread (when following the `production` alias) polls the registry, loads a new
version beside the old one and swaps one reference, so every batch runs on one version
and says which. Requests are validated here per item, and a bad one gets a 400 of its
own without failing the good requests batched with it.
"""

# No `from __future__ import annotations`: LitServe hands decode_request's annotation to
# FastAPI as the body model, and a string annotation would not resolve there.

import logging
import threading
from typing import Any

import litserve as ls
import torch
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ._litserve import DrainLoop
from ._metrics import SharedStats
from ._model import BadRequest, Served, answer, prepare, to_items

__all__ = ["PredictRequest", "ModelAPI"]

log = logging.getLogger(__name__)

COLLECT = 64  # requests taken off the queue at once; the forward batch is the version's


class PredictRequest(BaseModel):
    """`{"inputs": [item, ...]}`; FastAPI answers 422 to invalid JSON or another shape."""

    inputs: list[Any] = Field(min_length=1)


class _Rejected:
    def __init__(self, message: str) -> None:
        self.message = message


class ModelAPI(ls.LitAPI):
    def __init__(self, source: Any, stats: SharedStats, poll_s: float = 1.0) -> None:
        super().__init__(max_batch_size=COLLECT, loop=DrainLoop())
        self.source, self.stats, self.poll_s = source, stats, poll_s
        self._served: Served | None = None
        self._torch_device = torch.device("cpu")

    # --- worker life ------------------------------------------------------------------

    def setup(self, device: str) -> None:
        self._torch_device = torch.device(device)
        self._swap(self._load(self.source.wanted()), swap=False)
        if self.source.follows_alias:
            threading.Thread(target=self._follow, name="csearch-follow", daemon=True).start()

    def _load(self, version: int) -> Served:
        loaded = self.source.load(version, str(self._torch_device))
        return prepare(loaded, self._torch_device)

    def _swap(self, served: Served, *, swap: bool) -> None:
        self._served = served  # one reference: a batch reads it once
        self.stats.set_version(served.version, swap=swap)

    def _follow(self) -> None:
        """Poll the alias; a moved alias loads beside the serving model, then swaps in."""
        stop = threading.Event()
        while not stop.wait(self.poll_s):
            try:
                wanted = self.source.wanted()
                if self._served is not None and wanted != self._served.version:
                    self._swap(self._load(wanted), swap=True)
                    log.warning("now serving version %d", wanted)
            except Exception as e:  # a registry hiccup must not stop the serving model
                log.warning("could not follow the production alias: %s", e)

    # --- one batch of requests ------------------------------------------------------------

    def decode_request(self, request: PredictRequest) -> list[Any]:
        return request.inputs

    def batch(self, inputs: list[Any]) -> list[Any]:
        return inputs

    def predict(self, requests: list[list[Any]]) -> list[Any]:
        served = self._served
        assert served is not None
        if torch.get_num_threads() != served.threads:
            torch.set_num_threads(served.threads)
        parsed: list[list[torch.Tensor] | _Rejected] = []
        for inputs in requests:
            try:
                parsed.append(to_items(served, inputs))
            except BadRequest as e:
                parsed.append(_Rejected(str(e)))
        flat = [x for p in parsed if isinstance(p, list) for x in p]
        outs, cached, sizes = answer(served, flat, self._torch_device) if flat else ([], [], [])
        self.stats.record(sum(cached), len(cached) - sum(cached), sizes)
        results: list[Any] = []
        pos = 0
        for p in parsed:
            if isinstance(p, _Rejected):
                results.append(p)
                continue
            n = len(p)
            results.append({"outputs": [o.tolist() for o in outs[pos:pos + n]],
                            "version": served.version, "cached": cached[pos:pos + n]})
            pos += n
        return results

    def unbatch(self, output: list[Any]) -> list[Any]:
        return output

    def encode_response(self, output: Any) -> Any:
        if isinstance(output, _Rejected):
            return JSONResponse({"error": output.message}, status_code=400)
        return output
