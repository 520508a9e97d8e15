"""Placing worker processes on GPUs: one GPU per worker, round-robin.

A worker placed on a GPU sees only that GPU (`CUDA_VISIBLE_DEVICES`), so `cuda` inside it
is the GPU it was given and workers never share a card by accident. The GPU list comes
from torch, which counts devices through NVML without initialising CUDA (so
`CUDA_VISIBLE_DEVICES` can still be set afterwards). Where torch sees no GPU, the list
can be given in `CSEARCH_VISIBLE_GPUS` (`0,1`): tests check placement on machines
without GPUs that way, and the workers still run on the CPU.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO

__all__ = ["GPU_ENV", "VISIBLE_GPUS_ENV", "visible_gpus", "gpu_for", "wants_gpu",
           "place_on_gpu", "claim_gpu", "placed_gpu"]

GPU_ENV = "CSEARCH_GPU"  # set in a placed worker: the GPU it was given (for the trial attrs)
VISIBLE_GPUS_ENV = "CSEARCH_VISIBLE_GPUS"  # the GPU list when torch sees none (tests)
_LOCKS: list[IO[str]] = []  # claimed slots, held for the life of the process


def visible_gpus(env: Mapping[str, str] | None = None, count: int | None = None) -> list[str]:
    """The GPUs this machine lets a process use, as `CUDA_VISIBLE_DEVICES` entries.

    `count` is torch's device count (read here when not given). With `CUDA_VISIBLE_DEVICES`
    set, its entries are the GPUs; else `0..count-1`. With no GPU, `CSEARCH_VISIBLE_GPUS`.
    """
    env = os.environ if env is None else env
    if count is None:
        import torch

        count = torch.cuda.device_count()  # NVML: CUDA stays uninitialised
    if count > 0:
        given = [g.strip() for g in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
        return given[:count] if given else [str(i) for i in range(count)]
    return [g.strip() for g in env.get(VISIBLE_GPUS_ENV, "").split(",") if g.strip()]


def wants_gpu(device: str | None) -> bool:
    """Whether a worker with this `--device` is placed: `auto` and `cuda` are; `cpu` and an
    explicit `cuda:N` (the operator chose) are not."""
    return device in (None, "auto", "cuda")


def gpu_for(index: int, gpus: list[str]) -> str | None:
    """Worker `index`'s GPU, round-robin; None without GPUs."""
    return gpus[index % len(gpus)] if gpus else None


def place_on_gpu(gpu: str) -> None:
    """Make this process see only `gpu`. Call before anything initialises CUDA."""
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    os.environ[GPU_ENV] = gpu


def placed_gpu() -> str | None:
    """The GPU csearch placed this process on, if any."""
    return os.environ.get(GPU_ENV) or None


def claim_gpu(gpus: list[str], lock_dir: Path | None = None) -> str | None:
    """For a worker started on its own (`csearch worker`): take the least used GPU.

    Workers on one machine coordinate through lock files, one per GPU and slot, held for
    the life of the process (the kernel drops them when it dies): the first worker takes
    slot 0 of GPU 0, the next slot 0 of GPU 1, ..., then slot 1 of each: round-robin.
    """
    if not gpus:
        return None
    lock_dir = lock_dir or Path(os.environ.get("CSEARCH_GPU_LOCK_DIR")
                                or Path(tempfile.gettempdir()) / "csearch-gpu-locks")
    lock_dir.mkdir(parents=True, exist_ok=True)
    for slot in range(1024):
        for gpu in gpus:
            f = open(lock_dir / f"gpu{gpu.replace('/', '_')}-slot{slot}.lock", "w")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                continue
            _LOCKS.append(f)
            return gpu
    return gpus[0]
