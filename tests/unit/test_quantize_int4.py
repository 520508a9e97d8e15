"""Weight-only int4 (RTN, HQQ) and int8 on real kernels: the kernels compute with the
stored codes, the artifact reloads to the same outputs, and bad settings say why."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from objectives import QuantizationError, evaluate, rebuild, unpack_quantized, unpack_state
from objectives.pack import _parse, effective_bits, pack_state
from objectives.quantize import QuantizedWeight, apply_runtime, dequantize, quantize_weights
from objectives.weightonly import Int4WeightOnlyLinear, Int8WeightOnlyLinear, int4_hqq, int4_rtn
from spaces import Config, QuantConfig, TrainConfig, load_space, parse_space

CPU = torch.device("cpu")


def _model() -> nn.Module:
    torch.manual_seed(0)
    # 128 -> 64 takes the int4 kernel; 64 -> 24 (out not a multiple of 16) falls back to
    # int8 weight-only; 24 -> 16 (in not a multiple of 16) runs int8 without the kernel.
    return nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 24), nn.ReLU(),
                         nn.Linear(24, 16))


@pytest.mark.parametrize("method", ["int4_weight_only", "int4_hqq"])
def test_int4_artifact_reloads_to_the_same_outputs_on_the_kernel(method):
    model, x = _model(), torch.randn(7, 128)
    cfg = QuantConfig(method)
    codes = quantize_weights(model, cfg)
    dequantized = model(x)
    artifact = pack_state(model.state_dict(), codes)
    served = apply_runtime(model, cfg, CPU, quantized=codes)
    assert [type(m) for m in served] == [Int4WeightOnlyLinear, nn.ReLU, Int8WeightOnlyLinear,
                                         nn.ReLU, Int8WeightOnlyLinear]
    assert (codes["0"].bits, codes["0"].group_size) == (4, 64) and codes["0"].zeros is not None
    assert codes["2"].bits == 8 and codes["2"].zeros is None
    y = served(x)
    # The kernel computes with the stored codes: only its bf16 activations differ.
    assert torch.allclose(y, dequantized, rtol=0, atol=2e-2 * float(dequantized.abs().max()))
    _, layout = _parse(artifact)
    assert layout["0.weight"]["bits"] == 4 and layout["2.weight"]["bits"] == 8
    reloaded = _model()
    reloaded.load_state_dict(unpack_state(artifact))
    assert torch.equal(reloaded(x), dequantized)
    again = apply_runtime(reloaded, cfg, CPU, quantized=unpack_quantized(artifact))
    assert torch.equal(again(x), y)


def test_int8_weight_only_stores_int8_codes_and_runs_the_int8_kernel():
    model, x = _model(), torch.randn(3, 128)
    cfg = QuantConfig("int8_weight_only")
    codes = quantize_weights(model, cfg)
    ref = model(x)
    artifact = pack_state(model.state_dict(), codes)
    served = apply_runtime(model, cfg, CPU, quantized=codes)
    assert isinstance(served[0], Int8WeightOnlyLinear) and served[0]._kernel
    assert not served[4]._kernel  # in_features 24: the int8 kernel needs multiples of 16
    assert {q.bits for q in codes.values()} == {8}
    assert all(q.q.dtype == torch.int8 and q.q.abs().max() <= 127 for q in codes.values())
    assert _parse(artifact)[1]["0.weight"]["bits"] == 8
    assert torch.allclose(served(x), ref, rtol=0, atol=2e-2 * float(ref.abs().max()))


def test_hqq_reconstructs_a_weight_no_worse_than_round_to_nearest():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(128, 512, generator=g) * 0.05
    w[::7, ::13] *= 8  # outliers, as LLM weights have
    errs = {}
    for fn in (int4_rtn, int4_hqq):
        q, s, z = fn(w, 64)
        assert q.min() >= -8 and q.max() <= 7 and s.dtype == z.dtype == torch.bfloat16
        e = dequantize(QuantizedWeight(q, s, 4, 64, z)) - w
        errs[fn.__name__] = (e.abs().mean().item(), e.pow(2).mean().item())
    assert errs["int4_hqq"][0] <= errs["int4_rtn"][0]
    assert errs["int4_hqq"][1] <= errs["int4_rtn"][1]


def test_int4_stores_about_four_and_a_half_bits_per_weight():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1024, 256, bias=False))
    codes = quantize_weights(model, QuantConfig("int4_weight_only", group_size=64))
    artifact = pack_state(model.state_dict(), codes)
    bits = effective_bits(artifact, ["0.weight"], 1024 * 256)
    # 4-bit codes + a bf16 scale and zero per 64 weights = 4.5 (zlib may shave a little).
    assert 4.0 < bits <= 4.55
    assert len(artifact) < 0.15 * 1024 * 256 * 4


def test_bad_int4_settings_say_why():
    with pytest.raises(QuantizationError, match="int4 kernels; they take 32, 64, 128"):
        quantize_weights(_model(), QuantConfig("int4_hqq", group_size=16))
    model = _model()
    codes = quantize_weights(model, QuantConfig("int4_weight_only"))
    assert codes
    with pytest.raises(QuantizationError, match="stored codes"):
        apply_runtime(model, QuantConfig("int4_weight_only"), CPU)


def test_spaces_accept_the_new_methods_and_the_sensitivity_pass_probes_them():
    from search.sensitivity import probes_for

    space = parse_space('[params."quant.method"]\nchoices = ["int4_weight_only", "int4_hqq", '
                        '"int8_weight_only"]\n[params."quant.method[*]"]\n'
                        'choices = ["inherit", "int4_hqq"]\n')
    assert space.params[0].choices == ("int4_weight_only", "int4_hqq", "int8_weight_only")
    lm = load_space("lm")
    per_group = next(p for p in lm.params if p.name == "quant.method[*]")
    assert {"int8_weight_only", "int4_weight_only", "int4_hqq"} <= set(per_group.choices)
    probes = probes_for(lm)
    assert probes["int4_hqq"] == {"quant.method": "int4_hqq"}
    assert probes["int8_weight_only"] == {"quant.method": "int8_weight_only"}
    with pytest.raises(Exception, match="int3"):
        parse_space('[params."quant.method"]\nchoices = ["int3"]\n')


@pytest.mark.parametrize("text", [
    # a global int4 layer that can get group size 16
    '[params."quant.method"]\nchoices = ["int4_hqq", "lowbit"]\n'
    '[params."quant.group_size"]\nchoices = [0, 16]\n',
    # a group's int4 inheriting the global lowbit group size
    'include = ["compression"]\n[params."quant.method[*]"]\nchoices = ["inherit", "int4_hqq"]\n'
    '[params."quant.bits[*]"]\ntype = "int"\nlow = 2\nhigh = 8\n'
    'when = { "quant.method[*]" = "lowbit" }\n',
])
def test_a_space_whose_int4_layers_can_get_a_group_size_no_kernel_has_is_refused(text):
    from spaces import SpaceError

    with pytest.raises(SpaceError, match="'quant.group_size' can be 16 while a layer runs"):
        parse_space(text)
    # Group sizes only lowbit sees are fine.
    parse_space('[params."quant.method"]\nchoices = ["int4_hqq", "lowbit"]\n'
                '[params."quant.group_size"]\nchoices = [0, 16]\n'
                'when = { "quant.method" = "lowbit" }\n')


def test_an_int4_trial_reloads_from_its_artifact(digits):
    """digits-cnn: fc1 (512 -> 256) on the int4 kernel; fc2 (10 outputs) and the
    convolutions fall back to int8 codes."""
    config = Config(quant=QuantConfig("int4_hqq"), train=TrainConfig(epochs=0))
    ev = evaluate(digits, config, budget_mb=1.0, device=CPU, seed=0)
    base = float(digits.evaluate(digits.model))
    assert ev.metrics["accuracy"] > base - 0.02
    model = rebuild(digits, config, unpack_state(ev.artifact), CPU,
                    unpack_quantized(ev.artifact))
    assert isinstance(model.fc1, Int4WeightOnlyLinear)
    assert isinstance(model.fc2, Int8WeightOnlyLinear)
    assert float(digits.evaluate(model)) == pytest.approx(ev.metrics["accuracy"], abs=1e-9)
    assert ev.metrics["size_mb"] < 0.3 * len(pack_state(copy.deepcopy(digits.model)
                                                        .state_dict(), {})) / 1e6


def test_per_group_methods_mix_kernels_in_one_model():
    from objectives.quantize import DynamicInt8Linear

    model, x = _model(), torch.randn(4, 128)
    cfg = QuantConfig("none")
    plan = {"0": QuantConfig("int4_hqq", group_size=32), "2": QuantConfig("int8_dynamic"),
            "4": QuantConfig("int8_weight_only")}
    codes = quantize_weights(model, cfg, plan)
    assert codes["0"].group_size == 32 and codes["0"].scales.shape == (64, 4)
    ref = model(x)
    served = apply_runtime(model, cfg, CPU, plan, codes)
    assert [type(served[i]) for i in (0, 2, 4)] == [Int4WeightOnlyLinear, DynamicInt8Linear,
                                                    Int8WeightOnlyLinear]
    assert torch.allclose(served(x), ref, rtol=0, atol=5e-2 * float(ref.abs().max()))


def test_a_tied_output_layer_runs_on_the_int8_kernel_with_the_tables_stored_codes():
    from transformers import LlamaConfig, LlamaForCausalLM

    from objectives.lm.model import CausalLM
    from objectives.quantize import tied_heads

    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True))
    model, ids = CausalLM(lm).eval(), torch.randint(0, 96, (2, 5))
    assert tied_heads(model) == {"lm.lm_head": "lm.model.embed_tokens"}
    cfg = QuantConfig("int4_weight_only", group_size=32)
    codes = quantize_weights(model, cfg)
    table = codes["lm.model.embed_tokens"]
    assert table.bits == 8 and table.scales.dtype == torch.bfloat16
    with torch.no_grad():
        ref = model(ids)
    artifact = pack_state(model.state_dict(), codes)
    assert _parse(artifact)[1]["lm.lm_head.weight"] == {"k": "a", "of":
                                                        "lm.model.embed_tokens.weight"}
    served = apply_runtime(copy.deepcopy(model), cfg, CPU, quantized=codes)
    assert isinstance(served.lm.lm_head, Int8WeightOnlyLinear)
    assert isinstance(served.lm.model.layers[0].mlp.up_proj, Int4WeightOnlyLinear)
    with torch.no_grad():
        y = served(ids)
        assert torch.allclose(y, ref, rtol=0, atol=3e-2 * float(ref.abs().max()))
        model.load_state_dict(unpack_state(artifact))
        again = apply_runtime(model, cfg, CPU, quantized=unpack_quantized(artifact))
        assert torch.equal(again(ids), y)
