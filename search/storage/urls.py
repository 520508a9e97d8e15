"""Storage URLs: which one, which backend, and how to show it without its password."""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["DEFAULT_STORAGE", "resolve_url", "redact", "backend_of", "file_path",
           "artifact_dir_for"]

DEFAULT_STORAGE = "sqlite:///studies.db"


def resolve_url(storage: str | None) -> str:
    """--storage, else CSEARCH_STORAGE, else studies.db in the working directory."""
    url = storage or os.environ.get("CSEARCH_STORAGE") or DEFAULT_STORAGE
    # Like SQLAlchemy: scheme:///relative and scheme:////absolute; store absolute paths so
    # spawned workers and the artifact store agree whatever their working directory.
    for scheme in ("sqlite:///", "journal:///"):
        if url.startswith(scheme) and not url.startswith(scheme + "/"):
            rel = url[len(scheme) :]
            if rel and rel != ":memory:":
                url = scheme + str(Path(rel.split("?", 1)[0]).resolve())
    return url


def redact(url: str) -> str:
    """The URL with any password replaced by ***, safe to print and log."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def backend_of(url: str) -> str:
    """sqlite, postgresql, mysql or journal (or the unknown scheme as given)."""
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme == "postgres":
        return "postgresql"
    if scheme == "mariadb":
        return "mysql"
    return scheme


def file_path(url: str) -> Path | None:
    """The file of a sqlite:/// or journal:/// URL (None for in-memory)."""
    rest = url.split(":///", 1)[1] if ":///" in url else ""
    if not rest or rest == ":memory:":
        return None
    return Path(rest.split("?", 1)[0])


def artifact_dir_for(url: str) -> Path:
    """Default artifact store: beside a SQLite or journal file, else ./csearch-artifacts."""
    env = os.environ.get("CSEARCH_ARTIFACTS")
    if env:
        return Path(env).resolve()
    if backend_of(url) in ("sqlite", "journal"):
        path = file_path(url)
        if path is not None:
            return path.parent / f"{path.stem}-artifacts"
    return Path("csearch-artifacts").resolve()
