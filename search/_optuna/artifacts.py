"""An artifact upload with an id that says whose it is.

Optuna's `upload_artifact` names every artifact by a bare UUID, so the artifact folder
reads as a list of UUIDs. This writes the same record (`ArtifactMeta` under the
`artifacts:` system attr that optuna-dashboard lists and downloads from) with an id the
caller chooses; the store is Optuna's own.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import BinaryIO

from optuna.artifacts._upload import ARTIFACTS_ATTR_PREFIX, ArtifactMeta  # no id argument
from optuna.storages import BaseStorage

__all__ = ["upload_named_artifact"]


def upload_named_artifact(store: object, storage: BaseStorage, trial_id: int, artifact_id: str,
                          filename: str, body: BinaryIO, mimetype: str) -> str:
    """Record artifact `artifact_id` on the trial and write `body` to the store under it."""
    meta = ArtifactMeta(artifact_id=artifact_id, filename=filename, mimetype=mimetype,
                        encoding=None)
    storage.set_trial_system_attr(trial_id, ARTIFACTS_ATTR_PREFIX + artifact_id,
                                  json.dumps(asdict(meta)))
    store.write(artifact_id, body)  # type: ignore[attr-defined]
    return artifact_id
