"""A complete csearch plugin, written only against the public plugin API (DESIGN.md).

A small MLP on scikit-learn's wine data (178 samples, 13 features, 3 classes).

    csearch run --workload examples.wine_mlp:make_workload --space compression --trials 8

(run from the repository root, so that `examples` is importable; an installed package
can instead register `wine = "mypkg.wine:make_workload"` under the entry-point group
`csearch.workloads` and use `--workload wine`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from objectives import Workload


def _data():
    from sklearn.datasets import load_wine
    from sklearn.model_selection import train_test_split

    d = load_wine()
    x = torch.tensor(d.data, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.long)
    tr, te = train_test_split(list(range(len(y))), test_size=0.3, random_state=0, stratify=d.target)
    mean, std = x[tr].mean(0), x[tr].std(0)
    x = (x - mean) / std
    return x[tr], y[tr], x[te], y[te]


def make_workload() -> Workload:
    x_train, y_train, x_test, y_test = _data()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(13, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):  # full-batch training: well under a second on CPU
        opt.zero_grad()
        F.cross_entropy(model(x_train), y_train).backward()
        opt.step()
    model.eval()

    @torch.inference_mode()
    def evaluate(m: nn.Module) -> float:
        device = next(iter(m.state_dict().values())).device
        pred = m(x_test.to(device)).argmax(1).cpu()
        return float((pred == y_test).float().mean())

    batches = [(x_train[i : i + 32], y_train[i : i + 32]) for i in range(0, len(x_train), 32)]

    return Workload(
        name="wine-mlp",
        model=model,
        evaluate=evaluate,
        request_inputs=torch.cat([x_train, x_test]),
        train_batches=lambda: batches,
        loss_fn=F.cross_entropy,
        memory_budget_mb=0.5,
        n_requests=500,
        concurrency=16,
    )
