"""A user's causal LM with tied embeddings (the output layer is the input embedding's
tensor) stays tied: its uncompressed size is the bytes the user gave, its output layer is
compressed with the embedding and stored once, and a trial's artifact reloads tied."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import objectives.workloads as registry
from lm_fixtures import tiny_gpt2_dir
from objectives import evaluate, load_workload, rebuild, unpack_state
from objectives.quantize import dequantize, fake_quantize
from spaces import Config


@pytest.fixture(scope="module")
def tied_llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model directory, text): a Llama of 1.3 MB with tied embeddings (large enough that
    the safetensors headers are well under 1 % of the file)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("tied")
    gpt2, data = tiny_gpt2_dir(root)  # for its tokenizer and text
    out = root / "tied-llama"
    shutil.copytree(gpt2, out, ignore=shutil.ignore_patterns("*.safetensors", "config.json"))
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(
        vocab_size=300, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=1)).save_pretrained(out)
    return out, data


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_loaded", {})
    monkeypatch.setattr(registry, "_allowed", set())


def _workload(tied_llama: tuple[Path, Path]):
    from search.study import workload_ref

    d, data = tied_llama
    return load_workload(workload_ref(f"causal-lm:{d}", str(data)))


def _layout(artifact: bytes) -> dict:
    n = int.from_bytes(artifact[:8], "little")
    return json.loads(json.loads(artifact[8:8 + n])["__metadata__"]["layout"])


def _tied(model: torch.nn.Module) -> bool:
    lm = model.lm
    return lm.get_output_embeddings().weight is lm.get_input_embeddings().weight


def test_uncompressed_size_is_the_users_safetensors_bytes(
        tied_llama: tuple[Path, Path]) -> None:
    from search.study import baseline_config

    w = _workload(tied_llama)
    assert _tied(w.model)
    assert "lm_head" not in w.groups  # the head is the embeddings' tensor
    ev = evaluate(w, baseline_config(w), budget_mb=100, is_baseline=True)
    given = sum(f.stat().st_size for f in tied_llama[0].glob("*.safetensors"))
    assert abs(ev.metrics["size_mb"] * 1e6 / given - 1) < 0.01, (ev.metrics["size_mb"], given)
    layout = _layout(ev.artifact)
    assert layout["lm.lm_head.weight"] == {"k": "a", "of": "lm.model.embed_tokens.weight"}
    # Reloaded uncompressed, it is the user's model: tied, with the same logits.
    from transformers import AutoModelForCausalLM

    model = rebuild(w, baseline_config(w), unpack_state(ev.artifact), torch.device("cpu"))
    assert _tied(model)
    hf = AutoModelForCausalLM.from_pretrained(tied_llama[0], dtype=torch.float32).eval()
    x = w.extras["lm_data"].heldout[:2, :32]
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(input_ids=x).logits, rtol=0, atol=0)


@pytest.mark.parametrize("flat", [{"quant.method": "int8_dynamic", "prune.method": "global",
                                   "prune.amount": 0.3},
                                  {"quant.method": "lowbit", "quant.bits": 4,
                                   "quant.bits[mlp]": 3, "train.epochs": 1}])
def test_a_compressed_tied_head_follows_the_embedding_and_reloads_tied(
        tied_llama: tuple[Path, Path], flat: dict) -> None:
    w = _workload(tied_llama)
    config = Config.from_flat(flat)
    ev = evaluate(w, config, budget_mb=100)
    layout = _layout(ev.artifact)
    assert layout["lm.lm_head.weight"]["k"] == "a"  # stored once
    emb = layout["lm.model.embed_tokens.weight"]
    assert emb["k"] == "q" and emb["bits"] == 8  # per-row int8, as every embedding
    model = rebuild(w, config, unpack_state(ev.artifact), torch.device("cpu"))
    assert _tied(model)
    head = model.lm.get_output_embeddings()
    assert type(head) is torch.nn.Linear  # computes with the embedding's stored values
    if not config.train.epochs:  # never pruned: the original table on the int8 grid
        original = w.model.lm.get_input_embeddings().weight
        torch.testing.assert_close(head.weight, dequantize(fake_quantize(original, 8, 0)),
                                   rtol=0, atol=0)
    assert w.evaluate(model) == pytest.approx(ev.metrics["accuracy"], abs=1e-6)


def test_an_artifact_with_the_head_stored_on_its_own_still_loads_as_stored(
        tied_llama: tuple[Path, Path]) -> None:
    """Artifacts packed before tied layers stayed tied hold the head as its own tensor:
    loading them must not overwrite the embedding with the head."""
    from objectives.pack import pack_state
    from search.study import baseline_config

    w = _workload(tied_llama)
    state = {k: v.clone() for k, v in w.model.state_dict().items()}
    state["lm.lm_head.weight"] = state["lm.lm_head.weight"] * 0.5
    model = rebuild(w, baseline_config(w), unpack_state(pack_state(state, {})),
                    torch.device("cpu"))
    lm = model.lm
    assert torch.equal(lm.get_input_embeddings().weight, state["lm.model.embed_tokens.weight"])
    assert torch.equal(lm.get_output_embeddings().weight, state["lm.lm_head.weight"])
