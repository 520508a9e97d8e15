"""A real server for the models the search found (`csearch serve`): one process, a FastAPI
app served by uvicorn, model work on an inference thread per served version.

`serve(source, host, port)` blocks; `start_server(source)` runs it as a subprocess on a
free port. `RegistrySource(url, name, version=None)` serves a registered model version
(without `version` it follows the `production` alias); `WorkloadSource` serves a
workload's base model. `build_app(source)` is the app itself, and `HANDLES`/`ROUTES` the
place to plug in a workload kind (see `search.serving.app`). `serve_overhead_ms(workload,
device)` is the per-request overhead the serve replay charges every request.
"""

from ._errors import ApiError, error_body, error_response
from ._limits import Limits
from ._sources import Loaded, RegistrySource, ServeError, WorkloadSource
from ._versions import Handle, Versions
from .app import HANDLES, ROUTES, build_app, kind_of
from .overhead import serve_overhead_ms
from .server import HOSTS, Running, free_port, serve, start_server

__all__ = ["HANDLES", "HOSTS", "ROUTES", "ApiError", "Handle", "Limits", "Loaded",
           "RegistrySource", "Running", "ServeError", "Versions", "WorkloadSource",
           "build_app", "error_body", "error_response", "free_port", "kind_of", "serve",
           "serve_overhead_ms", "start_server"]
