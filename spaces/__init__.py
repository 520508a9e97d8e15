"""Search-space declarations: config dataclasses, the TOML format and built-in spaces.

This package imports no torch; `search` and `objectives` build on it.
"""

from .config import (
    PARAM_FIELDS,
    PRUNE_METHODS,
    QUANT_METHODS,
    Config,
    PruneConfig,
    QuantConfig,
    ServeConfig,
    TrainConfig,
)
from .errors import CsearchError, SpaceError
from .space import Param, Space, builtin_spaces, load_space, parse_space

__all__ = [
    "PARAM_FIELDS",
    "PRUNE_METHODS",
    "QUANT_METHODS",
    "Config",
    "PruneConfig",
    "QuantConfig",
    "ServeConfig",
    "TrainConfig",
    "CsearchError",
    "SpaceError",
    "Param",
    "Space",
    "builtin_spaces",
    "load_space",
    "parse_space",
]
