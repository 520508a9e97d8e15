"""Model versions: a trial's packed artifact registered as the next immutable version of a
model, in the study database, with a `production` alias that promote and rollback move.

A server on any machine loads a version from the database URL alone: the artifact's
bytes are stored with it and checked against its sha256 on every load.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from .. import attrs
from ..errors import StorageError, UsageError
from ..storage import backend_of, open_storage, redact, resolve_url
from . import _tables as T

if TYPE_CHECKING:
    import optuna
    from torch import nn

    from objectives import Workload

__all__ = ["ModelVersion", "Registry", "RegistryError", "PRODUCTION"]

PRODUCTION = "production"
_RETRIES = 50  # concurrent writers of one model retry on the unique keys
_SQL = ("sqlite", "postgresql", "mysql")


class RegistryError(StorageError):
    """A stored version is unusable (its bytes fail their sha256 check)."""


@dataclass(frozen=True)
class ModelVersion:
    """One immutable version of a model, as stored."""

    name: str
    version: int
    study: str
    trial: int
    sha256: str
    workload: str  # the study's workload ref
    params: dict  # the trial's params
    serve: dict  # serve.* values the trial ran with, plus memory_budget_mb
    metrics: dict  # the trial's metrics
    created_at: datetime  # UTC
    size_bytes: int = 0  # of the packed artifact

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["created_at"] = self.created_at.isoformat()
        return d


class Registry:
    """Versions of models in the SQL database at `url` (resolved as `--storage` is)."""

    def __init__(self, url: str | None = None):
        self.url = resolve_url(url)
        backend = backend_of(self.url)
        rest = self.url.split("://", 1)[-1]
        if backend not in _SQL or (backend == "sqlite" and rest in ("", "/", "/:memory:")):
            raise StorageError(
                f"model versions need an SQL storage (sqlite:///FILE, postgresql://..., "
                f"mysql://...) that other processes can read; {redact(self.url)!r} is not one"
            )
        # The database must already hold studies: a mistyped URL creates nothing.
        self._engine = open_storage(self.url, create=False, heartbeat=False).engine
        self._ready = False

    # --- writing -----------------------------------------------------------------------

    def deploy(self, study: optuna.Study, trial: int, name: str | None = None) -> ModelVersion:
        """Register the trial's stored packed artifact as the next version of `name`
        (default: the study's name). A trial without a stored artifact is refused."""
        from spaces import Config

        from ..export import complete_trial, served_split, stored_artifact, trial_meta
        from ..spec import BASELINE_ATTR, stored_spec

        name = study.study_name if name is None else name
        _check_name(name)
        frozen = complete_trial(study, trial)
        spec = stored_spec(study)
        data = stored_artifact(spec, frozen)
        if data is None:
            where = (f"its artifact directory {spec.artifacts} has none for it" if spec.artifacts
                     else "the study ran with --artifacts none")
            raise UsageError(
                f"trial {trial} of study {study.study_name!r} has no stored artifact ({where}); "
                "deploy registers the packed model the trial stored"
            )
        serve_params = {k: v for k, v in frozen.params.items() if k.startswith("serve.")}
        serve = asdict(Config.from_flat(serve_params).serve)
        serve.update(served_split(frozen) or {})  # the split the trial was measured with
        baseline = study.user_attrs.get(BASELINE_ATTR, {})
        serve["memory_budget_mb"] = spec.memory_budget_mb or baseline.get("memory_budget_mb")
        sha = hashlib.sha256(data).hexdigest()
        row = {
            "name": name, "study": study.study_name, "trial": trial, "sha256": sha,
            "size_bytes": len(data), "workload": spec.workload,
            "params_json": json.dumps(frozen.params, sort_keys=True),
            "serve_json": json.dumps(serve, sort_keys=True),
            "metrics_json": json.dumps(frozen.user_attrs.get(attrs.METRICS, {}), sort_keys=True),
            "meta_json": json.dumps(trial_meta(study, frozen, data, "artifact"), sort_keys=True),
        }
        self._ensure(create=True)

        def insert(conn: Any) -> int:
            number = 1 + (conn.execute(sa.select(sa.func.max(T.versions.c.version))
                                       .where(T.versions.c.name == name)).scalar() or 0)
            has_blob = conn.execute(sa.select(T.blobs.c.chunk).where(
                T.blobs.c.sha256 == sha, T.blobs.c.chunk == 0)).first() is not None
            if not has_blob:
                chunks = [data[i:i + T.CHUNK_BYTES]
                          for i in range(0, max(len(data), 1), T.CHUNK_BYTES)]
                for i, chunk in enumerate(chunks):  # one at a time: each fits a packet
                    conn.execute(sa.insert(T.blobs), {"sha256": sha, "chunk": i, "data": chunk})
            conn.execute(sa.insert(T.versions),
                         {**row, "version": number, "created_at": _now()})
            return number

        return self.get(name, self._retry(insert))

    def promote(self, name: str, version: int) -> None:
        """Point `production` at `version` (a no-op when it already is)."""
        self.get(name, version)  # refuses an unknown model or version

        def write(conn: Any) -> None:
            seq, stack = self._stack(conn, name)
            current = stack[-1] if stack else None
            if current != version:
                self._event(conn, name, seq + 1, "promote", version, current)

        self._retry(write)

    def rollback(self, name: str) -> int:
        """Move `production` back to the version it pointed at before the current one;
        return it. Repeated rollbacks walk further back through the promotions."""
        self._known(name)

        def write(conn: Any) -> int:
            seq, stack = self._stack(conn, name)
            if len(stack) < 2:
                now = f"production is v{stack[-1]}" if stack else "nothing was ever promoted"
                raise UsageError(f"model {name!r} has no previous production version to roll "
                                 f"back to ({now}); promote a version first")
            self._event(conn, name, seq + 1, "rollback", stack[-2], stack[-1])
            return stack[-2]

        return self._retry(write)

    # --- reading -----------------------------------------------------------------------

    def versions(self, name: str | None = None) -> list[ModelVersion]:
        """All versions of `name` (every model when None), oldest first."""
        if name is not None:
            self._known(name)
        if not self._ensure(create=False):
            return []
        q = sa.select(*_COLUMNS).order_by(T.versions.c.name, T.versions.c.version)
        if name is not None:
            q = q.where(T.versions.c.name == name)
        with self._engine.connect() as conn:
            return [_version(r) for r in conn.execute(q)]

    def get(self, name: str, version: int) -> ModelVersion:
        row = self._row(name, version, _COLUMNS)
        return _version(row)

    def aliases(self, name: str) -> dict[str, int]:
        prod = self.production(name)
        return {} if prod is None else {PRODUCTION: prod}

    def production(self, name: str) -> int | None:
        """The version `production` points at, or None before the first promote.
        One indexed query: a server polls it."""
        if not self._ensure(create=False):
            return None
        q = (sa.select(T.events.c.version).where(T.events.c.name == name)
             .order_by(T.events.c.seq.desc()).limit(1))
        with self._engine.connect() as conn:
            return conn.execute(q).scalar()

    def history(self, name: str) -> list[dict[str, Any]]:
        """Promote and rollback events, oldest first: action, version (production after
        it), previous (before it) and `at` (UTC, ISO 8601)."""
        self._known(name)
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(T.events).where(T.events.c.name == name)
                                .order_by(T.events.c.seq)).all()
        return [{"action": r.action, "version": r.version, "previous": r.previous,
                 "at": _utc(r.created_at).isoformat()} for r in rows]

    def models(self) -> list[str]:
        if not self._ensure(create=False):
            return []
        with self._engine.connect() as conn:
            return list(conn.execute(sa.select(T.versions.c.name).distinct()
                                     .order_by(T.versions.c.name)).scalars())

    def artifact(self, name: str, version: int) -> bytes:
        """The packed model's bytes, refused unless they match the version's sha256."""
        sha = self._row(name, version, (T.versions.c.sha256,)).sha256
        with self._engine.connect() as conn:
            chunks = conn.execute(sa.select(T.blobs.c.data).where(T.blobs.c.sha256 == sha)
                                  .order_by(T.blobs.c.chunk)).scalars().all()
        data = b"".join(bytes(c) for c in chunks)
        got = hashlib.sha256(data).hexdigest()
        if got != sha:
            raise RegistryError(
                f"model {name!r} v{version}: stored artifact fails its sha256 check "
                f"(expected {sha[:12]}..., got {got[:12]}...); the database copy is corrupt"
            )
        return data

    def load_model(self, name: str, version: int, device: str = "cpu", *,
                   workload: str | None = None) -> tuple[nn.Module, Workload]:
        """The version's model rebuilt as `search.export.load` rebuilds an export, and its
        workload. `workload` confirms a plugin workload, as for `load`."""
        from ..export import rebuild_export

        return rebuild_export(self.meta(name, version), self.artifact(name, version), device,
                              workload=workload)

    def meta(self, name: str, version: int) -> dict[str, Any]:
        """The version's `csearch.json` metadata (spec, params, metrics)."""
        return json.loads(self._row(name, version, (T.versions.c.meta_json,)).meta_json)

    def close(self) -> None:
        self._engine.dispose()

    # --- private -----------------------------------------------------------------------

    def _ensure(self, create: bool) -> bool:
        if not self._ready:
            if create:
                T.create(self._engine)
            self._ready = T.exist(self._engine)
        return self._ready

    def _known(self, name: str) -> None:
        names = self.models()
        if name not in names:
            hint = f"models: {', '.join(names)}" if names else "no model has been deployed"
            raise UsageError(f"no model named {name!r}; {hint}")

    def _row(self, name: str, version: int, columns: Any) -> Any:
        self._known(name)
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(*columns).where(
                T.versions.c.name == name, T.versions.c.version == version)).first()
            if row is None:
                have = conn.execute(sa.select(sa.func.max(T.versions.c.version))
                                    .where(T.versions.c.name == name)).scalar()
                raise UsageError(f"model {name!r} has no version {version}; valid: 1..{have}")
        return row

    def _stack(self, conn: Any, name: str) -> tuple[int, list[int]]:
        """(last event seq, production versions as a stack): a promote pushes, a
        rollback pops."""
        rows = conn.execute(sa.select(T.events.c.seq, T.events.c.action, T.events.c.version)
                            .where(T.events.c.name == name).order_by(T.events.c.seq)).all()
        stack: list[int] = []
        for r in rows:
            if r.action == "rollback":
                stack.pop()
            else:
                stack.append(r.version)
        return (rows[-1].seq if rows else 0), stack

    def _event(self, conn: Any, name: str, seq: int, action: str, version: int,
               previous: int | None) -> None:
        conn.execute(sa.insert(T.events), {"name": name, "seq": seq, "action": action,
                                           "version": version, "previous": previous,
                                           "created_at": _now()})

    def _retry(self, fn: Any) -> Any:
        """`fn(conn)` in one transaction, again after losing a unique-key race."""
        for attempt in range(_RETRIES):
            try:
                with self._engine.begin() as conn:
                    return fn(conn)
            except IntegrityError:
                if attempt == _RETRIES - 1:
                    raise
                time.sleep(random.uniform(0, 0.01 * (attempt + 1)))
        raise AssertionError("unreachable")


_COLUMNS = (T.versions.c.name, T.versions.c.version, T.versions.c.study, T.versions.c.trial,
            T.versions.c.sha256, T.versions.c.workload, T.versions.c.params_json,
            T.versions.c.serve_json, T.versions.c.metrics_json, T.versions.c.created_at,
            T.versions.c.size_bytes)


def _version(r: Any) -> ModelVersion:
    return ModelVersion(
        name=r.name, version=r.version, study=r.study, trial=r.trial, sha256=r.sha256,
        workload=r.workload, params=json.loads(r.params_json),
        serve=json.loads(r.serve_json), metrics=json.loads(r.metrics_json),
        created_at=_utc(r.created_at), size_bytes=int(r.size_bytes),
    )


def _check_name(name: str) -> None:
    if not name or len(name) > 255 or name != name.strip():
        raise UsageError(f"model name {name!r} must be 1-255 characters without surrounding "
                         "spaces")


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
