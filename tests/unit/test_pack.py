"""The packed artifact: bit packing, bit-exact round trips, sizes equal to the formula."""

from __future__ import annotations

import json
import math
import zlib

import numpy as np
import pytest
import torch

from objectives.pack import pack_bits, pack_state, unpack_bits, unpack_state
from objectives.quantize import QuantizedWeight, dequantize, fake_quantize


def _parse(data: bytes) -> tuple[int, dict, dict[str, int], dict[str, bytes]]:
    """(header length, layout, byte count of each tensor, raw bytes of each tensor)."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    layout = json.loads(header.pop("__metadata__")["layout"])
    sizes, raw = {}, {}
    for name, h in header.items():
        start, end = h["data_offsets"]
        sizes[name] = end - start
        raw[name] = data[8 + n + start : 8 + n + end]
    return n, layout, sizes, raw


def _stream_len(raw: dict[str, bytes], layout: dict, name: str, part: str) -> int:
    """Length of a stream before the optional zlib step (the formula's byte count)."""
    data = raw[f"{name}.{part}"]
    return len(zlib.decompress(data)) if part in layout[name]["z"] else len(data)


def _hand_codes(rows: int, cols: int, bits: int, keep_fraction: float, seed: int,
                group_size: int = 0) -> QuantizedWeight:
    """Random signed codes, exactly round(keep_fraction * n) of them non-zero."""
    rng = np.random.default_rng(seed)
    n = rows * cols
    qmax = 2 ** (bits - 1) - 1
    codes = np.zeros(n, dtype=np.int8)
    pos = rng.choice(n, size=round(keep_fraction * n), replace=False)
    mags = rng.integers(1, qmax + 1, size=len(pos))
    codes[pos] = (mags * rng.choice([-1, 1], size=len(pos))).astype(np.int8)
    groups = 1 if group_size <= 0 else math.ceil(cols / group_size)
    scales = torch.from_numpy(rng.uniform(0.01, 0.1, size=(rows, groups))).half()
    return QuantizedWeight(torch.from_numpy(codes).reshape(rows, cols), scales, bits, group_size)


# --- pack_bits -------------------------------------------------------------------------

@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("n", [0, 1, 7, 13, 1001])
def test_pack_bits_round_trip_is_bit_exact(bits, n):
    codes = np.random.default_rng(bits * 7 + n).integers(0, 2**bits, size=n).astype(np.uint8)
    packed = pack_bits(codes, bits)
    assert packed.dtype == np.uint8
    assert len(packed) == math.ceil(n * bits / 8)
    assert np.array_equal(unpack_bits(packed, bits, n), codes)


def test_pack_bits_uses_every_code_value():
    for bits in range(2, 9):
        codes = np.arange(2**bits, dtype=np.uint8)
        assert np.array_equal(unpack_bits(pack_bits(codes, bits), bits, len(codes)), codes)


# --- pack_state round trips -------------------------------------------------------------

@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("keep", [0.0, 0.05, 0.5, 1.0])
def test_quantized_weights_round_trip_bit_exact(bits, keep):
    qw = _hand_codes(12, 37, bits, keep, seed=bits, group_size=8)
    bias = torch.randn(12)
    data = pack_state({"fc.weight": dequantize(qw), "fc.bias": bias}, {"fc": qw})
    out = unpack_state(data)
    assert set(out) == {"fc.weight", "fc.bias"}
    assert torch.equal(out["fc.weight"], dequantize(qw))
    assert torch.equal(out["fc.bias"], bias)


def test_real_fake_quantized_conv_weight_round_trips():
    w = torch.randn(8, 4, 3, 3)
    w[w.abs() < 1.0] = 0
    qw = fake_quantize(w, 3, 16)
    out = unpack_state(pack_state({"c.weight": dequantize(qw)}, {"c": qw}))
    assert out["c.weight"].shape == w.shape
    assert torch.equal(out["c.weight"], dequantize(qw))


@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.95, 1.0])
def test_fp32_sparse_weights_round_trip_bit_exact(keep):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(20, 33, generator=g)
    w[torch.rand(w.shape, generator=g) >= keep] = 0
    data = pack_state({"l.weight": w}, {}, {"l.weight"})
    assert torch.equal(unpack_state(data)["l.weight"], w)


def test_plain_tensors_round_trip_bit_exact():
    state = {
        "bn.weight": torch.randn(5),
        "bn.running_var": torch.rand(5).double(),
        "bn.num_batches_tracked": torch.tensor(17, dtype=torch.int64),
        "emb.weight": torch.randn(4, 3).half(),
        "flag": torch.tensor([True, False]),
    }
    out = unpack_state(pack_state(state, {}))
    assert set(out) == set(state)
    for k, v in state.items():
        assert out[k].dtype == v.dtype and torch.equal(out[k], v), k


def test_unpack_refuses_a_foreign_safetensors_file():
    from safetensors.torch import save

    with pytest.raises(ValueError, match="not a csearch packed artifact"):
        unpack_state(save({"w": torch.zeros(3)}))


# --- sizes ------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", range(2, 9))
def test_packed_size_equals_the_formula(bits):
    rows, cols, keep = 64, 96, 0.3  # 70% sparse: sparse pays at 2+ bits; a bitmask beats indices
    n = rows * cols
    qw = _hand_codes(rows, cols, bits, keep, seed=11 * bits)
    nonzero = int((qw.q != 0).sum())
    assert nonzero == round(keep * n)
    bias = torch.randn(rows)
    data = pack_state({"fc.weight": dequantize(qw), "fc.bias": bias}, {"fc": qw})
    header, layout, sizes, raw = _parse(data)
    # The file is exactly header + tensors.
    assert len(data) == 8 + header + sum(sizes.values())
    entry = layout["fc.weight"]
    assert entry["bits"] == bits and entry["pos"] == "bitmask" and entry["count"] == nonzero
    assert _stream_len(raw, layout, "fc.weight", "val") == math.ceil(nonzero * bits / 8)
    assert _stream_len(raw, layout, "fc.weight", "pos") == math.ceil(n / 8)
    assert sizes["fc.weight.scales"] == rows * 1 * 2  # one fp16 scale per output channel
    assert sizes["fc.bias"] == rows * 4
    # zlib is only kept when it made a stream smaller.
    assert sizes["fc.weight.val"] <= math.ceil(nonzero * bits / 8)
    assert sizes["fc.weight.pos"] <= math.ceil(n / 8)


def test_packed_size_is_exact_for_incompressible_8bit_codes():
    rows, cols = 64, 128
    n = rows * cols
    qw = _hand_codes(rows, cols, 8, 0.5, seed=5, group_size=32)
    data = pack_state({"fc.weight": dequantize(qw)}, {"fc": qw})
    header, layout, sizes, _ = _parse(data)
    expected = math.ceil(n * 0.5 * 8 / 8) + math.ceil(n / 8) + rows * (cols // 32) * 2
    assert layout["fc.weight"]["z"] == []  # random codes and a random mask do not compress
    assert len(data) - 8 - header == expected


def test_very_sparse_weights_store_the_cheaper_positions():
    rows, cols = 64, 128
    n = rows * cols
    qw = _hand_codes(rows, cols, 4, 0.01, seed=9)
    nonzero = int((qw.q != 0).sum())
    _, layout, sizes, raw = _parse(pack_state({"fc.weight": dequantize(qw)}, {"fc": qw}))
    entry = layout["fc.weight"]
    assert entry["pos"] in ("bitmask", "index")
    assert sizes["fc.weight.pos"] <= min(math.ceil(n / 8), 2 * nonzero)
    if entry["pos"] == "index":
        assert _stream_len(raw, layout, "fc.weight", "pos") == 2 * nonzero  # uint16 indices


def test_sparse_storage_is_chosen_only_when_smaller():
    rows, cols = 32, 64
    n = rows * cols
    # 8 bits, 5% zeros: dropping 5% of one-byte codes saves less than an n-bit mask costs.
    dense_ish = _hand_codes(rows, cols, 8, 0.95, seed=1)
    _, layout, sizes, raw = _parse(pack_state({"w.weight": dequantize(dense_ish)},
                                              {"w": dense_ish}))
    assert "pos" not in layout["w.weight"] and "w.weight.pos" not in sizes
    assert _stream_len(raw, layout, "w.weight", "val") == n  # every code, dense
    # 8 bits, 60% zeros: sparse is smaller, and is chosen.
    sparse = _hand_codes(rows, cols, 8, 0.4, seed=2)
    _, layout, sizes, _ = _parse(pack_state({"w.weight": dequantize(sparse)}, {"w": sparse}))
    assert "pos" in layout["w.weight"]
    assert sizes["w.weight.val"] + sizes["w.weight.pos"] < n
    # fp32 without zeros, though listed as sparse, is stored densely.
    w = torch.randn(rows, cols) + 10
    _, layout, sizes, _ = _parse(pack_state({"w.weight": w}, {}, {"w.weight"}))
    assert "pos" not in layout["w.weight"]
    assert sizes["w.weight.val"] <= 4 * n


def test_sparsity_and_bits_shrink_the_artifact():
    w = torch.randn(128, 256)
    fp32 = len(pack_state({"l.weight": w}, {}))
    assert fp32 >= 4 * w.numel()
    w_sparse = w.clone()
    w_sparse[w_sparse.abs() < 1.645] = 0  # ~90% zeros
    qw = fake_quantize(w_sparse, 3, 0)
    packed = len(pack_state({"l.weight": dequantize(qw)}, {"l": qw}))
    assert packed < fp32 / 20


def test_a_tensor_shared_under_two_names_is_stored_once():
    from objectives.pack import shared_tensors

    emb = torch.randn(50, 8)
    state = {"emb.weight": emb, "bias": torch.zeros(3), "head.weight": emb.detach()}
    assert shared_tensors(state) == {"head.weight": "emb.weight"}
    once = pack_state(state, {})
    twice = pack_state({k: v.clone() for k, v in state.items()}, {})
    assert len(twice) - len(once) >= emb.numel() * 4
    out = unpack_state(once)
    assert out["head.weight"] is out["emb.weight"] and torch.equal(out["emb.weight"], emb)
