"""Layer groups and per-group parameters: round trips, validation, and that a group's
setting really reaches the packed artifact."""

from __future__ import annotations

import json

import optuna
import torch
from torch import nn
import pytest

from objectives import evaluate
from objectives.groups import default_groups, group_names, layer_groups
from objectives.pack import effective_bits
from search.errors import SpecError
from search.study import resolve_space
from spaces import Config, SpaceError, load_space, parse_space

EXAMPLE = "compression"  # the built-in space has per-group templates


def _layout(artifact: bytes) -> dict:
    n = int.from_bytes(artifact[:8], "little")
    return json.loads(json.loads(artifact[8 : 8 + n])["__metadata__"]["layout"])


def test_digits_names_one_group_per_layer(digits):
    assert group_names(digits) == ["conv1", "conv2", "fc1", "fc2"]
    assert layer_groups(digits) == {"conv1": "conv1", "conv2": "conv2", "fc1": "fc1",
                                    "fc2": "fc2"}


def test_default_groups_are_one_per_module_type(digits):
    assert default_groups(digits.model) == {"conv": ["conv1", "conv2"],
                                            "linear": ["fc1", "fc2"]}


def test_templates_expand_per_group_and_round_trip_through_fixed_trial(digits):
    space = resolve_space(load_space(EXAMPLE), digits)
    names = space.names()
    for g in ("conv1", "conv2", "fc1", "fc2"):
        assert f"quant.method[{g}]" in names and f"quant.bits[{g}]" in names
    assert parse_space(space.source).params == space.params
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(10):
        trial = study.ask()
        config = space.sample(trial)
        assert space.sample(optuna.trial.FixedTrial(trial.params)) == config
        assert Config.from_flat(config.flat()) == config
        study.tell(trial, 0.0)


def test_unknown_group_is_refused_naming_the_valid_ones(digits, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[params."quant.bits[attention]"]\ntype = "int"\nlow = 2\nhigh = 8\n')
    with pytest.raises(SpecError, match="attention.*conv1, conv2, fc1, fc2"):
        resolve_space(load_space(str(bad)), digits)


def test_per_group_only_for_compression_fields(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[params."train.lr[fc1]"]\ntype = "float"\nlow = 0.001\nhigh = 0.01\n')
    with pytest.raises(SpaceError, match="cannot be set per layer group"):
        load_space(str(bad))


def test_group_pinned_to_fp32_stays_fp32_in_the_artifact(digits):
    config = Config.from_flat({
        "quant.method": "lowbit", "quant.bits": 3, "train.epochs": 0,
        "quant.method[conv1]": "none",
        "quant.method[fc1]": "lowbit", "quant.bits[fc1]": 2,
        "quant.method[fc2]": "inherit",
    })
    ev = evaluate(digits, config, budget_mb=1.0)
    layout = _layout(ev.artifact)
    assert layout["conv1.weight"]["k"] == "f"  # stored as plain fp32
    assert layout["conv2.weight"]["bits"] == 3  # follows the global choice
    assert layout["fc1.weight"]["bits"] == 2
    assert layout["fc2.weight"]["bits"] == 3  # inherit = global


def test_per_group_amount_prunes_that_group_to_its_own_sparsity(digits):
    from objectives.groups import layer_plans
    from objectives.prune import masks_for

    config = Config.from_flat({"prune.method": "global", "prune.amount": 0.5,
                               "prune.amount[fc1]": 0.9})
    prune_plan, _ = layer_plans(digits, digits.model, config)
    masks = masks_for(digits.model, config.prune, prune_plan)
    fc1 = masks["fc1"]
    assert abs(1 - fc1.float().mean().item() - 0.9) < 1e-3
    rest = [m for name, m in masks.items() if name != "fc1"]
    kept = sum(int(m.sum()) for m in rest) / sum(m.numel() for m in rest)
    assert abs(1 - kept - 0.5) < 1e-3


def test_effective_bits_counts_stored_weight_bytes(digits):
    fp32 = evaluate(digits, Config.from_flat({"train.epochs": 0}), budget_mb=1.0)
    assert fp32.metrics["effective_bits"] == pytest.approx(32.0, abs=0.01)
    low = evaluate(digits, Config.from_flat({"quant.method": "lowbit", "quant.bits": 4,
                                             "train.epochs": 0}), budget_mb=1.0)
    # 4-bit codes plus fp16 per-channel scales, less what zero codes and zlib save.
    assert 2.5 < low.metrics["effective_bits"] < 4.5
    n = sum(m.weight.numel() for m in (digits.model.conv1, digits.model.conv2,
                                       digits.model.fc1, digits.model.fc2))
    names = ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"]
    assert effective_bits(low.artifact, names, n) == pytest.approx(low.metrics["effective_bits"])


def _embedding_workload():
    from objectives import Workload

    model = nn.Sequential(nn.Embedding(50, 8), nn.Flatten(), nn.Linear(8 * 4, 3))
    return Workload(
        name="emb", model=model, evaluate=lambda m: 1.0,
        request_inputs=torch.randint(0, 50, (10, 4)),
        groups={"emb": ["0"], "head": ["2"]},
        param_ranges={"prune.amount": {"low": 0.1, "high": 0.4},
                      "train.lr": {"type": "float", "low": 1e-5, "high": 1e-4, "log": True},
                      "serve.threads": {"type": "int", "low": 1, "high": 8}},
    )


def test_built_in_space_expands_pruning_only_where_something_is_prunable():
    space = resolve_space(load_space("compression"), _embedding_workload())
    names = space.names()
    assert "quant.method[emb]" in names and "quant.method[head]" in names
    assert "prune.amount[head]" in names
    assert "prune.amount[emb]" not in names  # embedding tables are never pruned


def test_workload_ranges_replace_the_space_ranges_but_keep_conditions():
    space = resolve_space(load_space("compression"), _embedding_workload())
    by_name = {p.name: p for p in space.params}
    lr = by_name["train.lr"]
    assert (lr.low, lr.high, lr.log) == (1e-5, 1e-4, True)
    for name in ("prune.amount", "prune.amount[head]"):
        p = by_name[name]
        assert (p.low, p.high) == (0.1, 0.4)
        assert p.when == (("prune.method", ("global",)),)
    assert "serve.threads" not in by_name  # a range never adds a parameter
    assert parse_space(space.source).params == space.params  # stored as it is searched



def test_workload_ranges_leave_a_user_space_file_as_written(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[params."train.lr"]\ntype = "float"\nlow = 1e-7\nhigh = 1e-7\n'
                    '[params."train.epochs"]\ntype = "categorical"\nchoices = [1]\n')
    lr = {p.name: p for p in resolve_space(load_space(str(path)), _embedding_workload()).params}
    assert (lr["train.lr"].low, lr["train.lr"].high) == (1e-7, 1e-7)
