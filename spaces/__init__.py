"""Search-space declarations: config dataclasses, the TOML format and built-in spaces.

This package imports no torch; `search` and `objectives` build on it.
"""

from .config import (
    INHERIT,
    INT4_GROUP_SIZES,
    INT4_METHODS,
    OMITTED,
    PARAM_FIELDS,
    PER_GROUP_FIELDS,
    PRUNE_METHODS,
    QUANT_METHODS,
    Config,
    PruneConfig,
    QuantConfig,
    ServeConfig,
    TrainConfig,
    split_name,
)
from .errors import CsearchError, SpaceError
from .space import Param, Space, builtin_spaces, load_space, parse_space

__all__ = [
    "INHERIT",
    "INT4_GROUP_SIZES",
    "INT4_METHODS",
    "OMITTED",
    "PARAM_FIELDS",
    "PER_GROUP_FIELDS",
    "PRUNE_METHODS",
    "QUANT_METHODS",
    "Config",
    "PruneConfig",
    "QuantConfig",
    "ServeConfig",
    "TrainConfig",
    "split_name",
    "CsearchError",
    "SpaceError",
    "Param",
    "Space",
    "builtin_spaces",
    "load_space",
    "parse_space",
]
