"""Helpers shared by the benchmark scripts (not part of the package)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time

import optuna

CLI = [sys.executable, "-m", "search.cli"]


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    e.update(extra)
    return e


def machine() -> str:
    return f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cpus"


def csearch(*args: str, check: bool = True, **extra: str) -> subprocess.CompletedProcess:
    r = subprocess.run([*CLI, *args], env=env(**extra), capture_output=True, text=True)
    if check and r.returncode != 0:
        raise SystemExit(f"csearch {' '.join(args)} failed: {r.stderr.strip()}")
    return r


def worker(study: str, url: str, *args: str, **extra: str) -> subprocess.Popen:
    return subprocess.Popen([*CLI, "worker", "--study", study, "--storage", url, "--quiet", *args],
                            env=env(**extra), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def load(study: str, url: str) -> optuna.Study:
    from search.storage import open_storage

    return optuna.load_study(study_name=study, storage=open_storage(url, heartbeat=False))


def delete(study: str, url: str) -> None:
    try:
        optuna.delete_study(study_name=study, storage=load(study, url)._storage)
    except Exception:
        pass


def now() -> float:
    return time.perf_counter()


def bulk_add_trials(study: optuna.Study, trials: list) -> None:
    """Append finished `trials` to an RDB-stored study in one transaction.

    `Study.add_trials` writes trial by trial, and per parameter it queries the study's
    earlier trials for the distribution, so filling a 10,000-trial benchmark study into
    SQLite took 30-130 ms per trial. Here the rows are built with Optuna's own ORM models
    (the same columns, encodings and UTC datetimes as `add_trials`) and flushed together;
    `check_same_trials` verifies the result reads back identically.
    """
    import json

    from optuna.distributions import distribution_to_json
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    storage = getattr(study._storage, "_backend", study._storage)  # under Optuna's cache
    with _create_scoped_session(storage.scoped_session) as session:
        models.StudyModel.find_or_raise_by_id(study._study_id, session, for_update=True)
        number = session.query(models.TrialModel).filter(
            models.TrialModel.study_id == study._study_id).count()
        for t in trials:
            row = models.TrialModel(study_id=study._study_id, number=number, state=t.state,
                                    datetime_start=t.datetime_start,
                                    datetime_complete=t.datetime_complete)
            number += 1
            for i, v in enumerate(t.values or ()):
                stored, kind = models.TrialValueModel.value_to_stored_repr(v)
                row.values.append(models.TrialValueModel(objective=i, value=stored,
                                                         value_type=kind))
            for name, value in t.params.items():
                dist = t.distributions[name]
                row.params.append(models.TrialParamModel(
                    param_name=name, param_value=dist.to_internal_repr(value),
                    distribution_json=distribution_to_json(dist)))
            row.user_attributes.extend(models.TrialUserAttributeModel(
                key=k, value_json=json.dumps(v)) for k, v in t.user_attrs.items())
            row.system_attributes.extend(models.TrialSystemAttributeModel(
                key=k, value_json=json.dumps(v)) for k, v in t.system_attrs.items())
            session.add(row)


def check_same_trials(expected: list, got: list) -> None:
    """Raise unless `got` (read back from a storage) holds the same trials as `expected`."""
    fields = ("number", "state", "params", "distributions", "values", "user_attrs",
              "system_attrs", "datetime_start", "datetime_complete")
    if len(expected) != len(got):
        raise AssertionError(f"{len(got)} trials read back, {len(expected)} written")
    for a, b in zip(expected, got):
        for f in fields:
            if getattr(a, f) != getattr(b, f):
                raise AssertionError(f"trial {a.number}: {f} differs after the copy")
