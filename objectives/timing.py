"""Forward-pass timing that repeats: a time-based warm-up, then medians of repeated rounds
until they settle, with several models interleaved on the same inputs (A/B alternation).

Why interleaved: a CPU's speed drifts (frequency, other processes, a cold cache after a
pause), so a model timed once at study start and another timed minutes later differ by
more than their real difference. Timing both on the same inputs in alternating order
exposes them to the same drift, so their ratio compares like with like.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["WARMUP_S", "REWARM_S", "MIN_ROUNDS", "MAX_ROUNDS", "forward", "warm_up",
           "time_interleaved"]

WARMUP_S = 1.0  # seconds of forward passes before the first timing in a process
REWARM_S = 0.25  # before each later one (the process has kept the CPU busy since)
MIN_ROUNDS = 3  # repeats of every input before the medians are checked for stability
MAX_ROUNDS = 11  # bound on repeats: stop here even if the medians still move
STABLE = 0.01  # stop once no model's total moved by more than this fraction in a round
MAX_TIMING_S = 20.0  # past MIN_ROUNDS, start no round after this many seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward(model: nn.Module, x: Any, device: torch.device) -> tuple[Any, float]:
    """One forward pass and its wall time in seconds (synchronised on GPU)."""
    _sync(device)
    t0 = time.perf_counter()
    out = model(x)
    _sync(device)
    return out, time.perf_counter() - t0


_warm = {"process": False}


def warm_up(models: Sequence[nn.Module], inputs: Sequence[Any], device: torch.device,
            seconds: float | None = None) -> int:
    """Run the models in turn over the inputs for at least `seconds` (default: `WARMUP_S`
    the first time in a process, when the CPU may have idled, `REWARM_S` after that) and
    at least three times each; return the passes per model. Call under inference mode."""
    if seconds is None:
        seconds = REWARM_S if _warm["process"] else WARMUP_S
        _warm["process"] = True
    start = time.perf_counter()
    passes = 0
    while passes < 3 or time.perf_counter() - start < seconds:
        x = inputs[passes % len(inputs)]
        for m in models:
            forward(m, x, device)
        passes += 1
    return passes


def time_interleaved(models: Sequence[nn.Module], inputs: Sequence[Any],
                     device: torch.device) -> list[list[float]]:
    """Median seconds of each model's forward on each input: `out[m][i]`.

    Each round runs every input through every model back to back, the models' order
    reversed every other round (A B, B A, ...), so drift hits all of them alike. Rounds
    repeat until each model's total of medians moves by less than `STABLE` (after at
    least `MIN_ROUNDS`, at most `MAX_ROUNDS`). Call under `torch.inference_mode()`
    after `warm_up`.
    """
    samples = np.zeros((len(models), len(inputs), MAX_ROUNDS))
    previous: np.ndarray | None = None
    start = time.perf_counter()
    rounds = 0
    while rounds < MAX_ROUNDS:
        order = range(len(models)) if rounds % 2 == 0 else range(len(models) - 1, -1, -1)
        for i, x in enumerate(inputs):
            for m in order:
                samples[m, i, rounds] = forward(models[m], x, device)[1]
        rounds += 1
        if rounds < MIN_ROUNDS:
            continue
        totals = np.median(samples[:, :, :rounds], axis=2).sum(axis=1)
        if previous is not None and np.all(np.abs(totals - previous) <= STABLE * previous):
            break
        if time.perf_counter() - start > MAX_TIMING_S:
            break
        previous = totals
    return np.median(samples[:, :, :rounds], axis=2).tolist()
