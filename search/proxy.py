"""`csearch proxy`: Optuna's gRPC storage proxy in front of the study database.

Hundreds of workers each holding database connections exhaust a PostgreSQL server
(`max_connections=100` is about 25 workers of 4 connections). Behind the proxy the
workers hold a gRPC channel each, and only the proxy talks to the database, through one
bounded pool. Workers use `grpc://HOST:PORT` as their storage URL.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor

import optuna

from .errors import UsageError
from .storage import backend_of, open_storage, redact
from .storage.backends import GRPC_EXTRA

__all__ = ["GRPC_EXTRA", "check_grpc", "serve_proxy"]


def check_grpc() -> None:
    """Refuse, naming the extra, when grpcio is not installed."""
    try:
        import grpc  # noqa: F401
        import google.protobuf  # noqa: F401
    except ImportError:
        raise UsageError(f"csearch proxy needs grpcio and protobuf: {GRPC_EXTRA}") from None


def serve_proxy(url: str, host: str, port: int, *, pool_size: int = 4,
                threads: int = 16) -> None:
    """Serve the storage at `url` over gRPC until interrupted.

    The database sees at most `pool_size` connections from the proxy, whatever the number
    of workers; `threads` requests are served at once (the rest queue in gRPC)."""
    check_grpc()
    if backend_of(url) in ("grpc", "journal"):
        raise UsageError(f"--storage {redact(url)!r}: the proxy serves a database "
                         "(postgresql://, mysql:// or sqlite:///), not a journal file or "
                         "another proxy")
    storage = open_storage(url, create=True, heartbeat=False, pool_size=pool_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        cached = optuna.storages.get_storage(storage)  # Optuna's per-process trial cache
        try:
            optuna.storages.run_grpc_proxy_server(
                cached, host=host, port=port, thread_pool=ThreadPoolExecutor(threads))
        except RuntimeError as e:  # grpc: "Failed to bind to address"
            raise UsageError(f"--host {host} --port {port}: cannot listen there ({e})") from None
