"""The one exception root of csearch.

It lives in the lowest package (`spaces`) so that every layer can raise it without
reversing the dependency direction `search -> objectives -> spaces`.
"""

from __future__ import annotations

__all__ = ["CsearchError", "SpaceError"]


class CsearchError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits 2."""


class SpaceError(CsearchError):
    """A search-space file or parameter is invalid."""
