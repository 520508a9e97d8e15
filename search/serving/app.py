"""The server as one FastAPI app, served in-process by uvicorn (`server.serve`).

`build_app(source, poll_s=1.0, limits=Limits())` loads the source's wanted version now
(errors reach the caller), decides the workload's kind with `kind_of(workload)` and
mounts that kind's routes. Plugging in a kind takes two entries:

- `HANDLES[kind](loaded, app) -> Handle`: one served version (see `_versions.Versions`
  for the Handle protocol: `version`, `close()`); it owns its model and its inference
  thread, and may read `app.state.metrics`, `.limits`, `.device`, `.registry`, `.name`.
- `ROUTES[kind](app, versions)`: adds the kind's routes, after the first version has
  loaded and before the app serves. Metrics are registered here, once per app (a
  registry refuses a name twice; Handles come and go), e.g. on `app.state`. A request
  does its work inside `with versions.pin() as h:`, so a swap never closes the version
  under it; a stream pins inside its generator (Starlette closes the generator when the
  client goes away, which unpins). `Limits.timeout_s` is for whole requests; a
  streaming route decides what its time limit means.

Every app has `GET /healthz`, `GET /version` (`{"name", "version"}`) and `GET /metrics`,
which renders `app.state.registry` (a prometheus_client CollectorRegistry). Errors,
including FastAPI's validation errors (as 400s), 404/405, the limits' 413/408 and 500s,
are OpenAI error objects (`_errors`); routes raise `ApiError` or return `error_response`.
`app.state.name` is the model name (for `/v1/models`), `app.state.versions` the
Versions; the lifespan shutdown (uvicorn's, after in-flight requests are answered) stops
it. Add a timed route to `app.state.metrics.timed` to count and time its requests.

Threads: model work runs on each version's own inference thread, never on the event loop
(torch releases the GIL while it computes). The version's `serve.threads` is torch's
intra-op thread count.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Response

from objectives import Workload
from objectives.lm import is_lm_workload

from ._classifier import ClassifierHandle, mount_classifier
from ._embed import is_embedding_workload, mount_embeddings
from ._lm import LMHandle
from ._openai import mount_openai
from ._errors import install_error_handlers
from ._limits import BodyLimitMiddleware, Limits
from ._metrics import CONTENT_TYPE, Metrics, TimingMiddleware
from ._sources import Loaded, ServeError
from ._versions import Handle, Versions

__all__ = ["HANDLES", "ROUTES", "build_app", "kind_of"]

HANDLES: dict[str, Callable[[Loaded, FastAPI], Handle]] = {
    "classifier": ClassifierHandle,
    "embeddings": ClassifierHandle,  # token ids in, one vector out, batched and cached
    "lm": lambda loaded, app: LMHandle(loaded, app.state.device),
}
ROUTES: dict[str, Callable[[FastAPI, Versions], None]] = {
    "classifier": mount_classifier,
    "embeddings": lambda app, versions: mount_embeddings(app, versions, _name(versions.source)),
    "lm": lambda app, versions: mount_openai(app, versions, _name(versions.source)),
}


def _name(source: Any) -> str:
    """The model name clients ask for: the registry name, or the workload's."""
    return getattr(source, "name", getattr(source, "workload", ""))


def kind_of(workload: Workload) -> str:
    """Which routes serve this workload: a key of ROUTES and HANDLES. Language models get
    the OpenAI completions API, sentence encoders `/v1/embeddings` (and `/predict`),
    everything else `/predict`."""
    if is_lm_workload(workload):
        return "lm"
    return "embeddings" if is_embedding_workload(workload) else "classifier"


def _make(app: FastAPI, loaded: Loaded) -> Handle:
    kind = kind_of(loaded.workload)
    if app.state.kind is None:
        app.state.kind = kind
    elif kind != app.state.kind:
        raise ServeError(f"version {loaded.version} is a {kind} model; this server serves "
                         f"{app.state.kind} models (start another server for it)")
    return HANDLES[kind](loaded, app)


def build_app(source: Any, *, poll_s: float = 1.0, limits: Limits | None = None,
              device: str = "cpu") -> FastAPI:
    """The app for `source` with its model loaded (ServeError if it cannot be)."""
    versions: Versions | None = None

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if versions is not None:
            versions.stop()

    # FastAPI's own OpenTelemetry hooks cost CPU on every request; /metrics is the report.
    app = FastAPI(title="csearch", lifespan=lifespan, docs_url=None, redoc_url=None,
                  telemetry={"tracing": False, "metrics": False, "logs": False})
    metrics = Metrics()
    app.state.metrics, app.state.registry = metrics, metrics.registry
    app.state.limits, app.state.device, app.state.kind = limits or Limits(), device, None
    install_error_handlers(app)
    versions = Versions(source, lambda loaded: _make(app, loaded), poll_s, device=device,
                        on_swap=metrics.swapped)
    app.state.versions = versions
    versions.start()
    name = _name(source)
    app.state.name = name
    ROUTES[app.state.kind](app, versions)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/version")
    async def version() -> dict[str, Any]:
        return {"name": name, "version": versions.current.version}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    app.add_middleware(BodyLimitMiddleware, limits=app.state.limits)
    app.add_middleware(TimingMiddleware, metrics=metrics)  # outermost: 413s are counted too
    return app
