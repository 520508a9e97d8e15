"""`csearch serve`: a registered model over HTTP (`search.serving`, on LitServe)."""

from __future__ import annotations

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
@storage_option
def serve_cmd(name: str, version: int | None, host: str, port: int, storage: str | None) -> None:
    """Serve a registered model over HTTP (LitServe): POST /predict, GET /healthz, /version,
    /metrics (Prometheus), with the version's own batch, cache and thread settings."""
    from ..serving import RegistrySource, serve
    from ..storage import redact, resolve_url

    url = resolve_url(storage)
    which = f"version {version}" if version is not None else "the production alias"
    serve(RegistrySource(url, name, version), host, port, announce=lambda: click.echo(
        f"serving {name} ({which}) from {redact(url)} at http://{host}:{port}; "
        "Ctrl-C stops it", err=True))
