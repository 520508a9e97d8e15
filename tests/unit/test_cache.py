"""The on-disk cache of base models and prepared data: built once, reused, never
trusted when corrupt."""

from __future__ import annotations

import subprocess
import sys

import torch

from objectives.workloads._cache import cached_tensors


def test_built_once_then_read_back(tmp_path, monkeypatch):
    monkeypatch.setenv("CSEARCH_CACHE_DIR", str(tmp_path))
    calls = []

    def build():
        calls.append(1)
        return {"x": torch.arange(6.0).reshape(2, 3), "y": torch.tensor([1, 2])}

    first = cached_tensors("k", build)
    second = cached_tensors("k", build)
    assert len(calls) == 1
    assert all(torch.equal(first[k], second[k]) for k in ("x", "y"))


def test_a_corrupt_entry_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("CSEARCH_CACHE_DIR", str(tmp_path))
    (tmp_path / "k.safetensors").write_bytes(b"not a safetensors file")
    got = cached_tensors("k", lambda: {"x": torch.ones(2)})
    assert torch.equal(got["x"], torch.ones(2))


def test_digits_start_up_skips_scikit_learn_once_cached(tmp_path, digits):
    """The split is cached with the model: a later process builds the workload without
    importing scikit-learn (a second or two of every command's start-up)."""
    import shutil

    from objectives.workloads._cache import cache_dir

    for model in cache_dir().glob("digits-cnn-s0-v*.safetensors"):  # not retrained here
        shutil.copy(model, tmp_path / model.name)
    code = ("import sys; from objectives import load_workload; w = load_workload('digits-cnn'); "
            "print(round(w.evaluate(w.model), 4), 'sklearn' in sys.modules)")
    env = {"CSEARCH_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           text=True, check=True).stdout.split() for _ in range(2)]
    assert runs[0][0] == runs[1][0]  # same held-out accuracy from the cached split
    assert runs[0][1] == "True" and runs[1][1] == "False"
