"""Directed neighbours: one step towards a smaller model from a front member, on the
parameter that holds the bytes, never on a parameter whose value changes nothing."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from search.refine import compress_step, inert
from search.refine.steps import complete, distribution
from spaces import Space, load_space

MINILM_GROUPS = ["embeddings", "qkv", "attn_out", "ffn_in", "ffn_out"]
DIGITS_GROUPS = ["conv1", "conv2", "fc1", "fc2"]
DIGITS_SHARES = {"conv1": 144 / 138384, "conv2": 4608 / 138384, "fc1": 131072 / 138384,
                 "fc2": 2560 / 138384}


def _space(groups: list[str]) -> Space:
    return load_space("compression").expand(groups, {"prune.amount": groups})


def _dist_of(p):  # the space's own distributions, as a trial without pins has
    return distribution(p)


# The sensitivity seed on an AVX2 CPU (issue 16): every group int8 but ffn_out, no
# pruning, no fine-tuning.
MINILM_SEED = {"prune.method": "none", "quant.method": "none", "train.lr": 3.5e-5,
               "train.epochs": 0,
               **{f"quant.method[{g}]": "int8_dynamic" for g in MINILM_GROUPS[:-1]},
               "quant.method[ffn_out]": "none"}
# The digits sensitivity seed: Deep Compression's per-layer rates.
DIGITS_SEED = {"prune.method": "global", "prune.amount": 0.9, "quant.method": "none",
               "train.lr": 1e-3, "train.epochs": 4,
               **{f"quant.method[{g}]": "lowbit" for g in DIGITS_GROUPS},
               "quant.bits[conv1]": 8, "quant.bits[conv2]": 4, "quant.bits[fc1]": 2,
               "quant.bits[fc2]": 4, "prune.amount[conv1]": 0.6, "prune.amount[conv2]": 0.6,
               "prune.amount[fc1]": 0.95, "prune.amount[fc2]": 0.6}


def test_inert_names_parameters_that_change_nothing():
    # no fine-tuning: the learning rate; every group has its own quantizer: the global one
    assert inert(MINILM_SEED, MINILM_GROUPS) == {"train.lr", "quant.method"}
    assert inert(DIGITS_SEED, DIGITS_GROUPS) == {"prune.amount", "quant.method"}
    inheriting = {**DIGITS_SEED, "quant.method[conv1]": "inherit"}
    assert "quant.method" not in inert(inheriting, DIGITS_GROUPS)  # conv1 follows it
    # A group with no value of its own keeps the global settings alive too.
    partial = {"prune.method": "global", "prune.amount": 0.5, "prune.amount[fc1]": 0.9,
               "quant.method": "lowbit", "quant.bits": 4, "quant.method[fc1]": "none",
               "train.epochs": 2, "train.lr": 1e-3}
    assert inert(partial, DIGITS_GROUPS) == set()
    assert inert(DIGITS_SEED) == set()  # groups unknown: no global setting is inert


def test_the_one_group_left_at_fp32_goes_to_int8_within_a_few_steps():
    """Issue 16's MiniLM case: the all-int8 neighbour of the seed is one directed step
    away, and the directed steps find it often (random 1-3 parameter mutations in 21
    dimensions rarely did)."""
    space = _space(MINILM_GROUPS)
    rng = np.random.RandomState(0)
    shares = {"embeddings": 0.54, "qkv": 0.12, "attn_out": 0.04, "ffn_in": 0.15,
              "ffn_out": 0.15}
    children = [complete(space, compress_step(space, MINILM_SEED, _dist_of, rng, shares),
                          _dist_of, rng) for _ in range(20)]
    all_int8 = [c for c in children
                if all(c[f"quant.method[{g}]"] == "int8_dynamic" for g in MINILM_GROUPS)]
    assert len(all_int8) >= 2
    for c in children:  # every child is one quantizer stronger somewhere, nothing weaker
        changed = {k for k in MINILM_SEED if c.get(k) != MINILM_SEED[k]} - {"train.epochs"}
        assert len([k for k in changed if k.startswith("quant.method[")]) == 1
        assert c["train.epochs"] in (0, 1)


def test_directed_steps_compress_and_favour_the_group_that_holds_the_bytes():
    space = _space(DIGITS_GROUPS)
    rng = np.random.RandomState(1)
    moved: Counter[str] = Counter()
    for _ in range(200):
        child = compress_step(space, DIGITS_SEED, _dist_of, rng, DIGITS_SHARES)
        assert child is not None
        diff = {k for k in DIGITS_SEED if child[k] != DIGITS_SEED[k]}
        step = diff - {"train.epochs", "train.lr"}
        assert len(step) == 1
        (name,) = step
        moved[name] += 1
        if name.startswith("prune.amount["):  # more sparse, within the range
            assert DIGITS_SEED[name] < child[name] <= 0.99
        elif name.startswith("quant.bits["):
            assert child[name] == DIGITS_SEED[name] - 1
        assert "prune.amount" not in diff  # the global amount every group overrides
        assert child["train.epochs"] == 4  # already at the range's top: no more epochs
    assert moved["prune.amount[fc1]"] + moved["quant.bits[fc1]"] > 0.5 * sum(moved.values())
    assert moved["prune.amount[conv1]"] > 0  # the others are not starved
    assert "quant.bits[fc1]" not in moved  # already at 2 bits, the range's bottom


@pytest.mark.parametrize("value, expected", [(0.99, None), (0.5, "up")])
def test_a_sparsity_at_the_top_of_its_range_cannot_be_stepped(value, expected):
    space = _space(DIGITS_GROUPS)
    seed = {**DIGITS_SEED, **{f"prune.amount[{g}]": value for g in DIGITS_GROUPS},
            **{f"quant.bits[{g}]": 2 for g in DIGITS_GROUPS}}
    child = compress_step(space, seed, _dist_of, np.random.RandomState(0), DIGITS_SHARES)
    if expected is None:
        assert child is None  # every group at 99 % and 2 bits: nothing left to compress
    else:
        assert child is not None
