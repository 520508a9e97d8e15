"""The `csearch` click group: error handling, library quieting and `main`.

Every user mistake surfaces as a `CsearchError`; the group turns it into one line on
stderr and exit status 2 (`--debug` shows the traceback instead).
"""

from __future__ import annotations

import gc
import sys
from typing import Any

import click

from spaces import CsearchError

from ..quiet import quiet_libraries

__all__ = ["cli", "main"]


class _UserError(click.ClickException):
    exit_code = 2


class _InternalError(click.ClickException):
    exit_code = 1

    def format_message(self) -> str:
        return f"internal error: {self.message} (run with --debug for the traceback)"


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        debug = bool(ctx.params.get("debug"))
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except CsearchError as e:
            if debug:
                raise
            raise _UserError(str(e)) from None
        except KeyboardInterrupt:  # Ctrl-C before any trial started: 128 + SIGINT
            click.echo("interrupted", err=True)
            raise click.exceptions.Exit(130) from None
        except Exception as e:
            if debug:
                raise
            raise _InternalError(f"{type(e).__name__}: {e}") from None




@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks and library logs.")
@click.version_option(package_name="csearch")
def cli(debug: bool) -> None:
    """Search pruning, quantization, fine-tuning and serving knobs of a PyTorch model.

    Each trial really compresses, fine-tunes and serves the model and measures accuracy,
    latency, size and memory. Results go to an Optuna storage (default ./studies.db).
    """
    quiet_libraries(debug)



def main() -> None:
    try:
        cli(prog_name="csearch")
    finally:
        storage = sys.modules.get("search.storage")  # not imported: nothing opened
        if storage is not None:
            storage.close_storages()
        # The interpreter's last full collection scans every object left, torch's included
        # (1-2 s after a run, measured); the process ends anyway, so skip it. Finalisers
        # and atexit handlers still run, and the storages are closed above.
        gc.freeze()


if __name__ == "__main__":
    main()
