"""The `csearch` command line; the only package that imports click.

`group` holds the click group and its error handling, `options` the options several
commands share, `tables` and `progress` the output formatting. Commands live in one
module per concept and register themselves on `cli` when imported below: a new command
is a new module here with `@cli.command()` functions, plus one import line.
"""

from .group import cli, main
from . import (  # noqa: F401  (registers the commands)
    lifecycle,
    listings,
    outputs,
    proxy,
    registry,
    serving,
)

__all__ = ["cli", "main"]
