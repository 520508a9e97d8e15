"""Fixtures shared by the dashboard and browser tests: a small real study (trials really
evaluated, artifacts uploaded) and `csearch dashboard` running on it as a subprocess.

The study uses a small space with no fine-tuning and a tight memory budget, so that its
five trials take seconds and some of them are infeasible (memory over the budget).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SPACE = """
[params."prune.method"]
choices = ["magnitude"]
[params."prune.threshold"]
type = "float"
low = 0.001
high = 0.1
log = true
[params."quant.method"]
choices = ["int8_dynamic", "lowbit"]
[params."quant.bits"]
type = "int"
low = 3
high = 8
when = { "quant.method" = "lowbit" }
[params."train.epochs"]
choices = [0]
[params."serve.batch_size"]
choices = [16]
[params."serve.cache_ratio"]
type = "float"
low = 0.0
high = 0.9
[params."serve.memory_ratio"]
type = "float"
low = 0.02
high = 0.3
"""
STUDY = "dash"
N_TRIALS = 5


def csearch(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "search.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 10) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (127.0.0.1 only)
        return r.read()


def get_json(url: str) -> dict:
    return json.loads(get(url))


@pytest.fixture(scope="session")
def real_study(tmp_path_factory):
    """(storage URL, artifact dir) of a 5-trial study with artifacts."""
    d = tmp_path_factory.mktemp("dash")
    (d / "space.toml").write_text(SPACE)
    url = f"sqlite:///{d}/studies.db"
    r = csearch("run", "--workload", "digits-cnn", "--study", STUDY, "--storage", url,
                "--trials", str(N_TRIALS),
                "--space", str(d / "space.toml"), "--sampler", "random", "--seed", "0",
                "--memory-budget-mb", "0.5", "--constraint", "accuracy_drop<=0.002", "-q",
                cwd=d)
    assert r.returncode == 0, r.stderr
    return url, d / "studies-artifacts"


@contextlib.contextmanager
def running_dashboard(*args: str):
    """Base URL of `csearch dashboard ARGS` on a free port, answering /api/studies;
    stopped on exit."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "search.cli", "dashboard", *args, "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"csearch dashboard exited {proc.returncode}: {proc.stdout.read()}")
            try:
                get(base + "/api/studies", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("csearch dashboard did not answer /api/studies in 90 s")
                time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def dashboard(real_study):
    """Base URL of `csearch dashboard` on the real study; stopped after the session."""
    url, _ = real_study
    with running_dashboard("--study", STUDY, "--storage", url) as base:
        yield base
