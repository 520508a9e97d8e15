"""`csearch proxy`: Optuna's gRPC storage proxy, for many workers on one database."""

from __future__ import annotations

import click

from .group import cli
from .options import storage_option


@cli.command()
@storage_option
@click.option("--port", type=click.IntRange(1, 65535), required=True,
              help="Port to listen on; workers use --storage grpc://HOST:PORT.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 for workers on other machines; the "
                   "proxy has no authentication, keep it on a private network).")
@click.option("--pool-size", type=click.IntRange(1, 1000), default=4, show_default=True,
              help="Database connections the proxy holds at most, for all workers together.")
@click.option("--threads", type=click.IntRange(1, 1000), default=16, show_default=True,
              help="Requests served at once; the others wait in gRPC's queue.")
def proxy(storage: str | None, port: int, host: str, pool_size: int, threads: int) -> None:
    """Serve the study database to workers over gRPC (Optuna's storage proxy).

    Hundreds of workers then hold no database connection of their own: only the proxy
    does, at most --pool-size. Heartbeats, reaping and the spool work through it; the
    one-commit-per-trial batching of direct PostgreSQL does not (README, Many workers).
    Runs until interrupted (Ctrl-C, SIGTERM)."""
    from ..proxy import check_grpc, serve_proxy
    from ..storage import redact, resolve_url

    check_grpc()
    url = resolve_url(storage)
    click.echo(f"storage proxy for {redact(url)} on grpc://{host}:{port} "
               f"(at most {pool_size} database connections)", err=True)
    serve_proxy(url, host, port, pool_size=pool_size, threads=threads)
