"""Where the trials' packed models live: an Optuna artifact store (the `ArtifactStore`
protocol: `open_reader`, `write`, `remove`) on a folder, with each model in a folder named
by its study and trial, `DIR/default/trial-12/<hex>.safetensors`, not a bare UUID.

An artifact id is `<trial number>-<32 hex digits>`: optuna-dashboard's download route
accepts only hex digits and dashes, and the id alone finds the file. Ids of older
studies (bare UUIDs, files directly in DIR) are read where they are.
"""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path
from typing import BinaryIO

from optuna.artifacts.exceptions import ArtifactNotFound

__all__ = ["TrialArtifactStore", "new_artifact_id"]

_ID = re.compile(r"^(\d+)-([0-9a-f]{32})$")
_FLAT = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]*$")  # an older id: a file in DIR itself


def new_artifact_id(trial_number: int) -> str:
    return f"{trial_number}-{uuid.uuid4().hex}"


def _folder_name(study: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", study).strip("._") or "study"


class TrialArtifactStore:
    """Writes under `base/<study>/trial-<n>/` (`study` is needed to write); reads any
    study's artifacts by id."""

    def __init__(self, base: str | Path, study: str | None = None):
        self.base = Path(base)
        self.study = study

    def _path(self, artifact_id: str, writing: bool = False) -> Path:
        m = _ID.match(artifact_id)
        if m is None:
            if not _FLAT.match(artifact_id):
                raise ArtifactNotFound(f"invalid artifact id {artifact_id!r}")
            return self.base / artifact_id
        number, key = m.groups()
        if writing:
            if self.study is None:
                raise ValueError("a TrialArtifactStore writes only for a study")
            return self.base / _folder_name(self.study) / f"trial-{number}" / f"{key}.safetensors"
        found = sorted(self.base.glob(f"*/trial-{number}/{key}.safetensors"))
        if not found:
            raise ArtifactNotFound(f"artifact {artifact_id} not found in {self.base}")
        return found[0]

    def open_reader(self, artifact_id: str) -> BinaryIO:
        try:
            return open(self._path(artifact_id), "rb")
        except FileNotFoundError as e:
            raise ArtifactNotFound(f"artifact {artifact_id} not found") from e

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        path = self._path(artifact_id, writing=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            shutil.copyfileobj(content_body, f)

    def remove(self, artifact_id: str) -> None:
        try:
            self._path(artifact_id).unlink()
        except FileNotFoundError as e:
            raise ArtifactNotFound(f"artifact {artifact_id} not found") from e
