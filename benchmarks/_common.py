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
