"""KV-cache formats and the block pool's accounting (objectives.lm.kv, objectives.lm.blocks)."""

from __future__ import annotations

import pytest
import torch

from objectives.lm.blocks import BlockPool, BlockPoolError, prefix_hashes
from objectives.lm.kv import (
    dequantize_kv,
    fake_quant_kv,
    kv_bytes_per_token,
    quantize_kv,
)


def test_int8_kv_error_is_within_half_a_step_per_token_and_head():
    x = torch.randn(6, 50, 32) * torch.logspace(-2, 2, 50)[None, :, None]
    codes, scales = quantize_kv(x, 8)
    assert codes.dtype == torch.int8 and scales.shape == (6, 50)
    err = (dequantize_kv(codes, scales) - x).abs()
    step = scales.float().unsqueeze(-1)
    # half a step, plus the fp16 rounding of the scale times the largest code
    assert bool((err <= step / 2 + 127 * step * 2 ** -11 + 1e-7).all())
    # scales are per token and head: a tiny token keeps its own precision
    assert float(err[:, 0].max()) < 1e-3 * float(err[:, -1].max())


def test_fp16_kv_round_trip_is_close_and_int8_is_coarser():
    x = torch.randn(4, 64, 16)
    e16 = (fake_quant_kv(x, 16) - x).abs().max()
    e8 = (fake_quant_kv(x, 8) - x).abs().max()
    assert 0 < e16 < 2e-3 < e8 < 0.05
    assert fake_quant_kv(x, None) is x
    with pytest.raises(ValueError, match="kv_bits"):
        quantize_kv(x, 4)


def test_bytes_per_token_follow_layers_heads_and_kv_dtype():
    assert kv_bytes_per_token(4, 2, 32, 16) == 4 * 2 * 2 * 32 * 2
    # int8: one byte per element plus an fp16 scale per token, head, K and V
    assert kv_bytes_per_token(4, 2, 32, 8) == 4 * 2 * 2 * (32 + 2)


def _pool(n: int = 6, bits: int = 16) -> BlockPool:
    return BlockPool(n, 4, n_layers=2, n_kv_heads=2, head_dim=8, kv_bits=bits)


def test_pool_refuses_double_free_and_over_allocation():
    pool = _pool()
    blocks = pool.allocate(4)
    assert pool.available == 2 and pool.in_use == 4
    with pytest.raises(BlockPoolError):
        pool.allocate(3)
    pool.release(blocks)
    with pytest.raises(BlockPoolError, match="freed twice"):
        pool.release(blocks[:1])
    assert pool.available == 6 and pool.in_use == 0


def test_freed_prefix_blocks_are_parked_reused_and_evicted_lru():
    pool = _pool(4)
    tokens = list(range(9))
    hashes = prefix_hashes(tokens, 4)
    assert len(hashes) == 2 and prefix_hashes(tokens[:4] + [99] * 4, 4)[0] == hashes[0]
    a = pool.allocate(3)
    pool.register(a[0], hashes[0])
    pool.register(a[1], hashes[1])
    pool.release(a)
    assert pool.parked == 2 and pool.available == 4
    hit = pool.lookup(hashes)
    assert hit == a[:2] and pool.parked == 0 and pool.in_use == 2
    pool.release(hit)
    # a different prefix shares nothing after the first differing block
    assert pool.lookup(prefix_hashes([0, 1, 2, 3, 7, 7, 7, 7], 4)) == a[:1]
    pool.release(a[:1])
    # allocation takes free blocks first, then evicts the least recently used parked one
    b = pool.allocate(3)
    assert sorted(b[:2]) == sorted([a[2], 3]) and b[2] == a[1] and pool.parked == 1
    assert pool.lookup(hashes) == a[:1]  # the recently used first block survived
    pool.release(b + a[:1])
    assert pool.available == 4 and pool.in_use == 0


@pytest.mark.parametrize("bits", [16, 8])
def test_pool_reads_back_what_was_written_across_blocks(bits):
    pool = _pool(6, bits)
    blocks = pool.allocate(3)
    k, v = torch.randn(2, 10, 8), torch.randn(2, 10, 8)
    pool.write(1, blocks, 0, k[:, :6], v[:, :6])
    pool.write(1, blocks, 6, k[:, 6:], v[:, 6:])
    rk, rv = pool.read(1, blocks, 10)
    assert torch.allclose(rk, fake_quant_kv(k.transpose(0, 1), bits).transpose(0, 1))
    assert torch.allclose(rv, fake_quant_kv(v.transpose(0, 1), bits).transpose(0, 1))
    with pytest.raises(BlockPoolError, match="beyond"):
        pool.read(1, blocks, 13)
    pool.release(blocks)
    with pytest.raises(BlockPoolError, match="while free"):
        pool.read(1, blocks, 4)


def test_kv_bits_is_a_space_parameter_with_16_and_8_only():
    from spaces import Config, load_space, parse_space
    from spaces.errors import SpaceError

    space = load_space("lm")
    assert "quant.kv_bits" in space.names() and "quant.method" in space.names()
    assert Config().quant.kv_bits == 16
    assert Config.from_flat({"quant.kv_bits": 8}).quant.kv_bits == 8
    with pytest.raises(SpaceError, match="from 16, 8"):
        parse_space('[params."quant.kv_bits"]\nchoices = [16, 4]\n')
    with pytest.raises(SpaceError, match="from 16, 8"):
        parse_space('[params."quant.kv_bits"]\ntype = "int"\nlow = 8\nhigh = 16\n')
