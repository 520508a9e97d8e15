"""Errors of the engine; all derive from `CsearchError` (one line, exit status 2)."""

from __future__ import annotations

from spaces import CsearchError

__all__ = ["CsearchError", "StorageError", "SpecError", "StudyNotFound", "UsageError"]


class StorageError(CsearchError):
    """A storage URL is malformed, unreachable or not a csearch/Optuna database."""


class SpecError(CsearchError):
    """A study spec is invalid, or differs from the stored one on resume."""


class StudyNotFound(CsearchError):
    """The named study does not exist in the storage."""


class UsageError(CsearchError):
    """Any other invalid argument (objective, constraint, device, trial number)."""
