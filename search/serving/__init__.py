"""A real server for the models the search found (`csearch serve`): one process, a FastAPI
app served by uvicorn, model work on an inference thread per served version.

`serve(source, host, port)` blocks; `start_server(source)` runs it as a subprocess on a
free port. `RegistrySource(url, name, version=None)` serves a registered model version
(without `version` it follows the `production` alias); `WorkloadSource` serves a
workload's base model. `build_app(source)` is the app itself, and `HANDLES`/`ROUTES` the
place to plug in a workload kind (see `search.serving.app`). `serve_overhead_ms(workload,
device)` is the per-request overhead the serve replay charges every request.
"""

from typing import Any

from ._limits import Limits
from ._sources import Loaded, RegistrySource, ServeError, WorkloadSource
from ._versions import Handle, Versions
from .overhead import serve_overhead_ms
from .server import HOSTS, Running, free_port, serve, start_server

_APP = {"ApiError": "_errors", "error_body": "_errors", "error_response": "_errors",
        "HANDLES": "app", "ROUTES": "app", "build_app": "app", "kind_of": "app"}


def __getattr__(name: str) -> Any:
    """The app's names load FastAPI: only when asked for (a study that measures the
    server's overhead starts it as a subprocess and needs none of them)."""
    if name in _APP:
        import importlib

        return getattr(importlib.import_module(f".{_APP[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["HANDLES", "HOSTS", "ROUTES", "ApiError", "Handle", "Limits", "Loaded",
           "RegistrySource", "Running", "ServeError", "Versions", "WorkloadSource",
           "build_app", "error_body", "error_response", "free_port", "kind_of", "serve",
           "serve_overhead_ms", "start_server"]
