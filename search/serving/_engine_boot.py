"""Imported first by the engine processes' fork server: the libraries' import noise
(torchao's CUDA-only libraries, pytree registrations) stays out of the server's stderr,
as it does in the server itself; `csearch --debug` (its environment variable) shows it."""

from __future__ import annotations

import os

from ..quiet import DEBUG_ENV, quiet_libraries

quiet_libraries(debug=bool(os.environ.get(DEBUG_ENV)))
