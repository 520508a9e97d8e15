"""Model versions on every SQL backend: one parametrised fixture, `db` (SQLite file,
PostgreSQL from `CSEARCH_TEST_POSTGRES_URL`, MySQL/MariaDB from `CSEARCH_TEST_MYSQL_URL`),
each holding a copy of one real 2-trial digits study whose trials stored their packed
models. In-memory and journal storages are refused with a clear error.
"""

from __future__ import annotations

import hashlib
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
import uuid
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
import torch

from search.errors import StorageError, UsageError
from search.export import export_trial, load, stored_artifact
from search.registry import ModelVersion, Registry, RegistryError
from search.registry import _tables as T
from search.spec import SPEC_ATTR, stored_spec
from search.storage import open_storage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from registry_fixtures import source_study  # noqa: E402

SQL_BACKENDS = ["sqlite", "postgresql", "mysql"]


@dataclass
class Db:
    kind: str
    url: str
    study: optuna.Study  # this backend's copy of the source study
    names: list[str]  # models created by the tests, removed at the end

    def model(self) -> str:
        name = f"m-{uuid.uuid4().hex[:8]}"
        self.names.append(name)
        return name


_DBS: dict[str, Db] = {}


@pytest.fixture(scope="module", autouse=True)
def _cleanup():
    yield
    for db in _DBS.values():
        reg = Registry(db.url)
        with reg._engine.begin() as conn:
            for table in (T.versions, T.events):
                conn.execute(sa.delete(table).where(table.c.name.in_(db.names)))
            conn.execute(sa.delete(T.blobs).where(T.blobs.c.sha256.not_in(
                sa.select(T.versions.c.sha256))))
        reg.close()
        if db.kind != "sqlite":
            optuna.delete_study(study_name=db.study.study_name,
                                storage=open_storage(db.url, heartbeat=False))
    _DBS.clear()


@pytest.fixture(params=SQL_BACKENDS)
def db(request, tmp_path_factory) -> Db:
    kind = request.param
    if kind in _DBS:
        return _DBS[kind]
    src_url, src_name = source_study(tmp_path_factory)
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('reg') / 'studies.db'}"
    elif kind == "postgresql":
        url = request.getfixturevalue("postgres_url")
    else:
        url = request.getfixturevalue("mysql_url")
    storage = open_storage(url, create=True, heartbeat=False)
    name = f"reg-{uuid.uuid4().hex[:8]}"
    optuna.copy_study(from_study_name=src_name, from_storage=src_url, to_storage=storage,
                      to_study_name=name)
    _DBS[kind] = Db(kind, url, optuna.load_study(study_name=name, storage=storage), [])
    return _DBS[kind]


def test_deploy_records_the_trial_and_numbers_versions(db: Db):
    reg, name = Registry(db.url), db.model()
    v1 = reg.deploy(db.study, 0, name)
    v2 = reg.deploy(db.study, 1, name)
    assert (v1.version, v2.version) == (1, 2)
    trial = db.study.trials[0]
    data = stored_artifact(stored_spec(db.study), trial)
    assert v1.sha256 == hashlib.sha256(data).hexdigest() and v1.size_bytes == len(data)
    assert (v1.study, v1.trial, v1.workload) == (db.study.study_name, 0, "digits-cnn")
    assert v1.params == trial.params
    assert v1.metrics == trial.user_attrs["metrics"]
    assert v1.serve == {"batch_size": 16, "threads": 1,
                        "cache_ratio": trial.params["serve.cache_ratio"],
                        "memory_ratio": trial.params["serve.memory_ratio"],
                        "memory_budget_mb": db.study.user_attrs["baseline"]["memory_budget_mb"]}
    assert v1.created_at.tzinfo is not None and v1.created_at <= v2.created_at
    # A fresh registry (another process) sees the same versions, and the bytes.
    other = Registry(db.url)
    assert other.versions(name) == [v1, v2]
    assert other.artifact(name, 1) == data
    # Versions are immutable: deploying again adds one, v1 stays as it was.
    v3 = other.deploy(db.study, 0, name)
    assert v3.version == 3 and v3.sha256 == v1.sha256
    assert reg.get(name, 1) == v1
    assert reg.versions(name) == [v1, v2, v3]
    assert name in reg.models()


def test_default_name_is_the_study(db: Db):
    reg = Registry(db.url)
    db.names.append(db.study.study_name)
    v = reg.deploy(db.study, 1)
    assert v.name == db.study.study_name and v.version >= 1


def test_concurrent_deploys_get_distinct_numbers(db: Db):
    name, n = db.model(), 6
    regs = [Registry(db.url) for _ in range(n)]
    start = threading.Barrier(n)

    def deploy(reg: Registry) -> int:
        start.wait()
        return reg.deploy(db.study, 0, name).version

    with ThreadPoolExecutor(n) as pool:  # a deploy's error is raised here
        got = list(pool.map(deploy, regs, timeout=120))
    assert sorted(got) == list(range(1, n + 1))
    assert [v.version for v in Registry(db.url).versions(name)] == list(range(1, n + 1))


def test_promote_and_rollback_move_production_and_are_recorded(db: Db):
    reg, name = Registry(db.url), db.model()
    for t in (0, 1, 0):
        reg.deploy(db.study, t, name)
    assert reg.production(name) is None and reg.aliases(name) == {}
    with pytest.raises(UsageError, match="no previous production"):
        reg.rollback(name)
    reg.promote(name, 1)
    reg.promote(name, 2)
    reg.promote(name, 2)  # already production: nothing recorded
    reg.promote(name, 3)
    assert reg.aliases(name) == {"production": 3}
    assert reg.rollback(name) == 2
    assert Registry(db.url).production(name) == 2
    assert reg.rollback(name) == 1
    with pytest.raises(UsageError, match="no previous production"):
        reg.rollback(name)
    history = reg.history(name)
    assert [(e["action"], e["version"], e["previous"]) for e in history] == [
        ("promote", 1, None), ("promote", 2, 1), ("promote", 3, 2),
        ("rollback", 2, 3), ("rollback", 1, 2)]
    times = [e["at"] for e in history]
    assert times == sorted(times) and all(t.endswith("+00:00") for t in times)
    with pytest.raises(UsageError, match="has no version 9; valid: 1..3"):
        reg.promote(name, 9)
    with pytest.raises(UsageError, match="no model named"):
        reg.promote("no-such-model", 1)
    assert len(reg.history(name)) == 5 and reg.production(name) == 1


def test_tampered_artifact_fails_its_sha256_check(db: Db):
    reg, name = Registry(db.url), db.model()
    v = reg.deploy(db.study, 1, name)
    with reg._engine.connect() as conn:
        good = conn.execute(sa.select(T.blobs.c.data).where(
            T.blobs.c.sha256 == v.sha256, T.blobs.c.chunk == 0)).scalar_one()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    try:
        with reg._engine.begin() as conn:
            conn.execute(sa.update(T.blobs).where(T.blobs.c.sha256 == v.sha256,
                                                  T.blobs.c.chunk == 0).values(data=bytes(bad)))
        with pytest.raises(RegistryError, match="sha256"):
            reg.artifact(name, 1)
        with pytest.raises(RegistryError, match="sha256"):
            reg.load_model(name, 1)
    finally:
        with reg._engine.begin() as conn:
            conn.execute(sa.update(T.blobs).where(T.blobs.c.sha256 == v.sha256,
                                                  T.blobs.c.chunk == 0).values(data=good))
    assert hashlib.sha256(reg.artifact(name, 1)).hexdigest() == v.sha256


def test_load_model_equals_export_load(db: Db, tmp_path):
    reg, name = Registry(db.url), db.model()
    for number in (0, 1):
        v = reg.deploy(db.study, number, name)
        model, workload = reg.load_model(name, v.version)
        export_trial(db.study, number, tmp_path / str(number))
        exported = load(tmp_path / str(number))
        x = workload.batch([workload.request(i) for i in range(50)])
        with torch.inference_mode():
            assert torch.equal(model(x), exported(x))


def test_trial_without_artifact_is_refused_and_nothing_written(db: Db):
    reg, name = Registry(db.url), db.model()
    reg.deploy(db.study, 0, name)
    study = db.study
    spec = dict(study.user_attrs[SPEC_ATTR])
    try:
        study.set_user_attr(SPEC_ATTR, {**spec, "artifacts": None})
        with pytest.raises(UsageError, match="no stored artifact"):
            reg.deploy(study, 1, name)
    finally:
        study.set_user_attr(SPEC_ATTR, spec)
    with pytest.raises(UsageError, match="has no trial 7"):
        reg.deploy(study, 7, name)
    assert [v.version for v in reg.versions(name)] == [1]


def test_unknown_names_are_refused(db: Db):
    reg = Registry(db.url)
    for call in (lambda: reg.get("no-such-model", 1), lambda: reg.versions("no-such-model"),
                 lambda: reg.history("no-such-model"), lambda: reg.rollback("no-such-model")):
        with pytest.raises(UsageError, match="no model named 'no-such-model'"):
            call()
    assert isinstance(reg.versions(), list)
    assert all(isinstance(v, ModelVersion) for v in reg.versions())


@pytest.mark.parametrize("url", ["journal:///{tmp}/j.log", "sqlite:///:memory:", "sqlite://"])
def test_non_sql_storages_are_refused(url, tmp_path):
    with pytest.raises(StorageError, match="model versions need an SQL storage"):
        Registry(url.format(tmp=tmp_path))


def test_reads_create_no_tables(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    open_storage(url, create=True, heartbeat=False)
    reg = Registry(url)
    assert reg.versions() == [] and reg.models() == [] and reg.production("m") is None
    assert not T.exist(reg._engine)
    with pytest.raises(StorageError, match="no database"):
        Registry(f"sqlite:///{tmp_path / 'missing.db'}")
