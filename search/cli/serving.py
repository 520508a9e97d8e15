"""`csearch serve`: a registered model over HTTP (`search.serving`: FastAPI on uvicorn)."""

from __future__ import annotations

import os
import sys

import click

from .group import cli
from .options import storage_option


@cli.command("serve")
@click.option("--name", required=True, help="Model name in the registry (`csearch versions`).")
@click.option("--version", type=int, default=None,
              help="Serve this version. Default: follow the production alias (a promote or "
                   "rollback takes effect within 5 s).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind: 127.0.0.1, 0.0.0.0 or ::.")
@click.option("--port", type=int, default=8000, show_default=True, help="Port to listen on.")
@click.option("--max-items", type=click.IntRange(1), default=4096, show_default=True,
              help="Items one POST /predict may hold (over it: 413).")
@click.option("--max-body-mb", type=click.FloatRange(0, min_open=True), default=16.0,
              show_default=True, help="Request body size limit in MiB (over it: 413).")
@click.option("--request-timeout-s", type=click.FloatRange(0, min_open=True), default=60.0,
              show_default=True, help="Time one request may take (over it: 408).")
@storage_option
def serve_cmd(name: str, version: int | None, host: str, port: int, max_items: int,
              max_body_mb: float, request_timeout_s: float, storage: str | None) -> None:
    """Serve a registered model over HTTP: POST /predict, GET /healthz, /version, /metrics
    (Prometheus), with the version's own batch, cache and thread settings. SIGTERM or
    Ctrl-C answers the requests in flight, then exits 0."""
    from ..serving import Limits, RegistrySource, serve
    from ..storage import redact, resolve_url

    url = resolve_url(storage)
    which = f"version {version}" if version is not None else "the production alias"
    limits = Limits(max_items=max_items, max_body_bytes=max(1, round(max_body_mb * 2**20)),
                    timeout_s=request_timeout_s)
    serve(RegistrySource(url, name, version), host, port, limits=limits,
          announce=lambda: click.echo(f"serving {name} ({which}) from {redact(url)} at "
                                      f"http://{host}:{port}; Ctrl-C stops it", err=True))
    # Stopped gracefully: exit now, not through interpreter teardown, which can abort
    # while torch's worker threads still exist (see search/serving/__main__.py).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
