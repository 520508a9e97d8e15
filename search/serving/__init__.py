"""A real server for the models the search found (`csearch serve`), on LitServe.

`serve(source, host, port)` blocks; `start_server(source)` runs it as a subprocess on a
free port. `RegistrySource(url, name, version=None)` serves a registered model version
(without `version` it follows the `production` alias); `WorkloadSource` serves a
workload's base model. `serve_overhead_ms(workload, device)` is the per-request overhead
the serve replay charges every request.
"""

from ._sources import RegistrySource, ServeError, WorkloadSource
from .overhead import serve_overhead_ms
from .server import HOSTS, Running, free_port, serve, start_server

__all__ = ["HOSTS", "RegistrySource", "Running", "ServeError", "WorkloadSource", "free_port",
           "serve", "serve_overhead_ms", "start_server"]
