"""`digits-cnn`: scikit-learn's 8x8 digits and a small CNN (138k parameters).

The base model trains in a few seconds on CPU, once; it is cached on disk keyed by
workload name, seed and code version.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..workload import Workload
from ._cache import cached_state_dict, cached_tensors

__all__ = ["DigitsCNN", "make_digits_workload"]

_CODE_VERSION = 1


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, 256)
        self.fc2 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


def _data(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The stratified split, cached: importing scikit-learn costs a second or two of every
    command's start-up."""
    d = cached_tensors(f"digits-data-s{seed}-v{_CODE_VERSION}", lambda: _split(seed))
    return d["x_train"], d["y_train"], d["x_test"], d["y_test"]


def _split(seed: int) -> dict[str, torch.Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(
        list(range(len(y))), test_size=0.33, random_state=seed, stratify=d.target
    )
    return {"x_train": x[idx_train], "y_train": y[idx_train], "x_test": x[idx_test],
            "y_test": y[idx_test]}


def _batches(x: torch.Tensor, y: torch.Tensor,
             size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(40):
        perm = torch.randperm(len(x), generator=g)
        for xb, yb in _batches(x[perm], y[perm], 64):
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
    model.eval()


def make_digits_workload(seed: int = 0) -> Workload:
    x_train, y_train, x_test, y_test = _data(seed)

    def build() -> nn.Module:
        torch.manual_seed(seed)
        m = DigitsCNN()
        _train(m, x_train, y_train, seed)
        return m

    model = DigitsCNN()
    model.load_state_dict(cached_state_dict(f"digits-cnn-s{seed}-v{_CODE_VERSION}", build))
    model.eval()

    @torch.inference_mode()
    def evaluate(m: nn.Module) -> float:
        device = next(iter(m.state_dict().values())).device
        m.eval()
        pred = torch.cat([m(xb.to(device)).argmax(1).cpu()
                          for xb, _ in _batches(x_test, y_test, 512)])
        return float((pred == y_test).float().mean())

    train = _batches(x_train, y_train, 64)

    def train_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(train)).tolist()
        return [train[i] for i in order]

    # Requests: every digit image (train and test), replayed with Zipf-skewed repeats.
    pool = torch.cat([x_train, x_test])
    return Workload(
        name="digits-cnn",
        model=model,
        evaluate=evaluate,
        request_inputs=pool,
        train_batches=train_batches,
        loss_fn=F.cross_entropy,
        memory_budget_mb=1.0,
        zipf_skew=1.1,
        n_requests=2000,
        concurrency=64,
        groups={"conv1": ["conv1"], "conv2": ["conv2"], "fc1": ["fc1"], "fc2": ["fc2"]},
    )
