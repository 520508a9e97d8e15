"""Third-party noise kept out of csearch's output; `csearch --debug` shows it.

Shared by the CLI and the worker processes `run --workers N` spawns (a spawned process
starts with the libraries' defaults, and imports torchao only when a trial needs it).
"""

from __future__ import annotations

import logging
import os
import warnings

__all__ = ["DEBUG_ENV", "quiet_libraries"]

# Set by `csearch --debug`, so that spawned workers show what the command shows.
DEBUG_ENV = "CSEARCH_DEBUG"

# Loggers that warn while their library is imported: torchao about its CUDA-only .so files,
# torch's pytree about torchao's enum registrations. Set before the import, a child
# logger's level holds; torch's import resets the `torch` logger's own level.
_IMPORT_NOISE = ("torch", "torch.utils._pytree", "torchao")


def quiet_libraries(debug: bool) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.DEBUG if debug else optuna.logging.ERROR)
    if debug:
        os.environ[DEBUG_ENV] = "1"
        return
    warnings.filterwarnings("ignore")
    for name in _IMPORT_NOISE:
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # transformers' "Loading weights" bar (a causal-lm:DIR workload), read at its import.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
