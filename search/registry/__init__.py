"""Model versions in the study database: deploy a trial, list versions, move the
`production` alias (promote, rollback) and load a version's model on any machine."""

from __future__ import annotations

from .registry import PRODUCTION, ModelVersion, Registry, RegistryError

__all__ = ["PRODUCTION", "ModelVersion", "Registry", "RegistryError"]
