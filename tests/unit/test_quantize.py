"""Quantization maths: error within alpha/2, values on the grid, in-place replacement."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from objectives.quantize import (
    dequantize,
    fake_quantize,
    int8_weight_bits,
    quantize_weights,
    weight_bits,
)
from spaces import QuantConfig


def _per_element_scale(w: torch.Tensor, scales: torch.Tensor, group_size: int) -> torch.Tensor:
    k = w[0].numel()
    g = k if group_size <= 0 or group_size >= k else group_size
    idx = torch.arange(k) // g
    return scales.float()[:, idx].reshape(w.shape)


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("group_size", [0, 4, 7, 16, 1000])
def test_error_is_within_half_a_step_per_group(bits, group_size):
    g = torch.Generator().manual_seed(bits * 100 + group_size)
    w = torch.randn(6, 30, generator=g) * torch.linspace(0.01, 2.0, 6).unsqueeze(1)
    qw = fake_quantize(w, bits, group_size)
    n_groups = 1 if group_size in (0, 1000) else math.ceil(30 / group_size)
    assert qw.scales.shape == (6, n_groups)
    assert qw.q.shape == w.shape
    alpha = _per_element_scale(w, qw.scales, group_size)
    err = (w - dequantize(qw)).abs()
    assert (err <= alpha / 2 * (1 + 1e-6) + 1e-12).all()
    qmax = 2 ** (bits - 1) - 1
    assert int(qw.q.abs().max()) <= qmax


def test_conv_weights_group_over_the_flattened_row():
    w = torch.randn(4, 3, 3, 3)  # 27 weights per output channel, groups of 8: 8+8+8+3
    qw = fake_quantize(w, 4, 8)
    assert qw.scales.shape == (4, 4)
    alpha = _per_element_scale(w.reshape(4, -1), qw.scales, 8).reshape(w.shape)
    assert ((w - dequantize(qw)).abs() <= alpha / 2 * (1 + 1e-6)).all()


@pytest.mark.parametrize("bits", [2, 3, 5, 8])
def test_dequantized_weights_are_on_the_grid(bits):
    w = torch.randn(5, 19)
    qw = fake_quantize(w, bits, 6)
    deq = dequantize(qw)
    alpha = _per_element_scale(w, qw.scales, 6)
    steps = deq / alpha
    assert torch.allclose(steps, steps.round(), atol=1e-4)
    # Quantizing the dequantized weights again changes nothing (a fixed point).
    again = fake_quantize(deq, bits, 6)
    assert torch.equal(again.q, qw.q)
    assert torch.equal(dequantize(again), deq)


def test_zeros_stay_zero():
    w = torch.randn(4, 16)
    w[w.abs() < 0.5] = 0.0
    w[2] = 0.0  # an all-zero row: no division by zero
    for bits in (2, 4, 8):
        qw = fake_quantize(w, bits, 4)
        deq = dequantize(qw)
        assert (deq[w == 0] == 0).all()
        assert (qw.q[w == 0] == 0).all()
        assert torch.isfinite(deq).all()


def test_weight_bits_per_method():
    assert weight_bits(QuantConfig("none")) is None
    assert weight_bits(QuantConfig("lowbit", bits=3)) == 3
    assert weight_bits(QuantConfig("int8_dynamic")) == int8_weight_bits()


def test_quantize_weights_replaces_in_place_and_returns_codes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weight_ids = {name: model.get_submodule(name).weight for name in ("0", "2")}
    codes = quantize_weights(model, QuantConfig("lowbit", bits=3, group_size=16))
    assert set(codes) == {"0", "2"}
    for name, qw in codes.items():
        layer = model.get_submodule(name)
        assert layer.weight is weight_ids[name]  # same parameter, new values
        assert torch.equal(layer.weight, dequantize(qw))
        assert not torch.equal(layer.weight, before[f"{name}.weight"])
        assert qw.bits == 3 and qw.group_size == 16
        assert torch.equal(layer.bias, before[f"{name}.bias"])  # biases stay fp32


def test_quantize_weights_none_changes_nothing():
    model = nn.Linear(5, 2)
    before = model.weight.clone()
    assert quantize_weights(model, QuantConfig("none")) == {}
    assert torch.equal(model.weight, before)


def test_dynamic_int8_kernel_computes_with_the_stored_codes():
    from objectives.quantize import DynamicInt8Linear, apply_runtime

    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
    codes = quantize_weights(model, QuantConfig("int8_dynamic"))
    x = torch.randn(8, 32)
    with torch.no_grad():
        ref = model(x)
    served = apply_runtime(model, QuantConfig("int8_dynamic"), torch.device("cpu"))
    for name in ("0", "2"):
        layer = served.get_submodule(name)
        assert isinstance(layer, DynamicInt8Linear)
        assert layer.reduce_range is False  # 8-bit activations; 7-bit weights without VNNI
        assert codes[name].bits == int8_weight_bits()
        # The kernel's weight is exactly the packed codes, not a re-rounded copy.
        assert torch.equal(layer.weight().int_repr(), codes[name].q)
    with torch.no_grad():  # only the activations are rounded on top of the stored weights
        assert torch.allclose(served(x), ref, atol=0.05)


def test_activation_fake_quant_rounds_like_dynamic_int8_and_passes_gradients():
    from objectives.qat import fake_quantize_activation

    x = torch.linspace(-1.0, 3.0, 1000, requires_grad=True)
    for reduce_range, levels in ((False, 255), (True, 127)):
        y = fake_quantize_activation(x, reduce_range)
        step = 4.0 / levels
        assert (y - x).abs().max() <= step / 2 + 1e-6
        assert len(torch.unique(y.detach())) <= levels + 1
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # straight through


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_dynamic_int8_does_not_saturate_at_full_range(sign):
    """The worst case for fbgemm's pairwise int16 sums on CPUs without VNNI: every
    activation at the top of its 8-bit range times every weight at its largest code. With
    8-bit weights there the sums saturate and the output drops by about half."""
    from objectives.quantize import apply_runtime

    layer = nn.Linear(64, 2, bias=False)
    with torch.no_grad():
        layer.weight.fill_(sign)
        layer.weight[1].fill_(-sign)
    quantize_weights(layer, QuantConfig("int8_dynamic"))
    model = apply_runtime(nn.Sequential(layer), QuantConfig("int8_dynamic"),
                          torch.device("cpu"))
    x = torch.full((3, 64), 3.0)
    x[:, 0] = 0.0  # range [0, 3]: 8-bit activations of 0 and 255
    with torch.no_grad():
        got = model(x)
    want = torch.tensor([63 * 3.0 * sign, -63 * 3.0 * sign]).expand(3, 2)  # 63 inputs of 3
    assert torch.allclose(got, want, rtol=1e-3), got
