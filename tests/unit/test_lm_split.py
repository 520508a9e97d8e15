"""The serve split that fits (issue 25): a config whose weights leave room for some split is
served with the fitting split nearest its sampled one; one that fits no split is
infeasible, with the reason; a causal LM without a budget of its own gets room for its
fp32 weights and a working KV pool."""

from __future__ import annotations

import math

import pytest

from objectives import Reporter, evaluate
from objectives.lm.budget import lm_default_budget, round_up_3
from objectives.lm.engine import blocks_for
from objectives.lm.kv import kv_bytes_per_token
from objectives.lm.model import lm_shape
from objectives.pack import pack_state
from objectives.split import SplitNeed, fitting_split, split_fits
from search.study import baseline_config
from spaces import Config

NEED = SplitNeed(budget_bytes=1_000_000, weight_bytes=600_000, cache_bytes=50_000,
                 mem_bytes=20_000)


def test_a_split_that_fits_is_kept():
    assert split_fits(0.2, 0.1, NEED)
    assert fitting_split(0.2, 0.1, NEED) == (0.2, 0.1)


def test_an_oversized_split_is_scaled_into_the_room_keeping_its_proportion():
    c, m = fitting_split(0.5, 0.25, NEED)
    assert split_fits(c, m, NEED)
    assert c / m == pytest.approx(2.0, rel=1e-6)
    # Nearest along that line: it uses the room the weights leave, to within rounding.
    assert 600_000 + round(1e6 * c) + round(1e6 * m) >= 1_000_000 - 3


def test_a_part_below_its_minimum_is_raised_and_the_other_gives_way():
    c, m = fitting_split(0.01, 0.5, NEED)  # KV pool below one sequence, too much in total
    assert split_fits(c, m, NEED)
    assert round(1e6 * c) >= 50_000 and round(1e6 * c) <= 50_002  # raised just enough
    assert m == pytest.approx(0.4 - c, abs=3e-6)  # the rest of the room
    c, m = fitting_split(0.3, 0.0, NEED)  # no workspace at all: raised to one token's
    assert split_fits(c, m, NEED) and round(1e6 * m) >= 20_000 and c <= 0.3


def test_no_split_fits_when_the_least_that_serves_exceeds_the_room():
    tight = SplitNeed(1_000_000, 940_000, 50_000, 20_000)
    assert tight.overage_bytes == 10_000
    assert fitting_split(0.0, 0.05, tight) is None
    assert fitting_split(0.3, 0.1, SplitNeed(1_000_000, 1_200_000, 0, 1)) is None


@pytest.mark.parametrize("c0,m0", [(0.6, 0.4), (0.0, 0.02), (0.33, 0.07), (1.0, 0.0)])
def test_the_result_fits_with_the_replays_rounding(c0, m0):
    for weights in (0, 123_457, 929_998):
        need = SplitNeed(1_000_003, weights, 50_001, 19_999)
        got = fitting_split(c0, m0, need)
        assert (got is not None) == (need.overage_bytes <= -2)
        if got is not None:
            assert split_fits(*got, need)


def test_round_up_to_three_significant_digits():
    assert round_up_3(6.4012) == pytest.approx(6.41)
    assert round_up_3(612.3) == 613 and round_up_3(0.4891) == pytest.approx(0.49)
    assert round_up_3(7.0) == 7.0


# --- on a causal LM --------------------------------------------------------------------

@pytest.fixture(scope="module")
def lm():
    from tests.unit.lm_split_workload import make_workload

    return make_workload()


class _Attrs(Reporter):
    def __init__(self) -> None:
        self.attrs: dict[str, object] = {}

    def attr(self, key: str, value: object) -> None:
        self.attrs[key] = value


def test_the_default_budget_is_fp32_weights_plus_a_working_kv_pool(lm):
    b = lm_default_budget(lm)
    settings, prompts = lm.extras["generation"], lm.extras["lm_data"].prompts
    shape = lm_shape(lm.model)
    per_block = settings.block_size * kv_bytes_per_token(shape.n_layers, shape.n_kv_heads,
                                                         shape.head_dim, 16)
    longest = max(len(p) for p in prompts)
    packed = len(pack_state(lm.model.state_dict(), {}))
    assert packed <= b.weight_bytes < packed + 512 * len(lm.model.state_dict()) + 4096
    assert b.sequences == settings.concurrency == 4
    assert b.kv_bytes == 4 * blocks_for(longest, settings.new_tokens, 8) * per_block
    assert b.tokens == max(4, longest) and b.workspace_bytes > 0
    total = (b.weight_bytes + b.kv_bytes + b.workspace_bytes) / 1e6
    assert total <= b.mb < total * 1.01 and b.mb == round_up_3(b.mb)
    # The fp32 baseline, served with the split the budget was made of, fits as it is and
    # runs all its clients at once.
    cfg = baseline_config(lm, b.split())
    ev = evaluate(lm, cfg, budget_mb=b.mb, seed=0, is_baseline=True)
    assert ev.memory_margin_mb <= 0 and ev.serve_split is None
    assert ev.metrics["max_running"] == 4


def test_a_config_breaking_the_budget_only_through_its_split_is_re_split(lm):
    weights = len(pack_state(lm.model.state_dict(), {}))
    budget = weights + 60_000
    cfg = Config.from_flat({"train.epochs": 0, "serve.cache_ratio": 0.5,
                            "serve.memory_ratio": 0.3})
    ev = evaluate(lm, cfg, budget_mb=budget / 1e6, seed=0)
    assert ev.memory_margin_mb <= 0  # feasible: served with a split that fits
    split = ev.serve_split
    assert split["sampled"] == {"cache_ratio": 0.5, "memory_ratio": 0.3}
    c, m = split["cache_ratio"], split["memory_ratio"]
    assert c / m == pytest.approx(0.5 / 0.3, rel=1e-6) and c + m < 0.8
    # What was measured is that split: the pool and workspace it gives, within the budget.
    assert ev.metrics["kv_cache_mb"] == pytest.approx(round(budget * c) / 1e6)
    assert ev.metrics["workspace_mb"] == pytest.approx(round(budget * m) / 1e6)
    assert ev.metrics["memory_mb"] <= budget / 1e6
    assert ev.metrics["throughput_tps"] > 0 and ev.metrics["max_running"] >= 1


def test_a_config_that_fits_no_split_is_infeasible_with_its_reason(lm):
    weights = len(pack_state(lm.model.state_dict(), {}))
    rec = _Attrs()
    cfg = Config.from_flat({"train.epochs": 0, "serve.cache_ratio": 0.0,
                            "serve.memory_ratio": 0.0})
    ev = evaluate(lm, cfg, budget_mb=(weights + 2_000) / 1e6, seed=0, reporter=rec)
    assert ev.serve_split is None
    assert ev.memory_margin_mb > 0 and math.isfinite(ev.memory_margin_mb)
    assert "no serve split fits" in str(rec.attrs["rejected"])
