"""The user-model path: a local Hugging Face causal LM (a tiny GPT-2 saved with
`save_pretrained`, with a tokenizer trained here) plus a text file runs a study through
the CLI, exports, and `search.export.load` reloads it with the trial's accuracy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import objectives.workloads as registry
from lm_fixtures import tiny_gpt2, tiny_gpt2_dir
from objectives.lm.model import conv1d_to_linear, decoder_forward, full_attention, lm_logits
from objectives.pack import shared_tensors

ROOT = Path(__file__).resolve().parents[2]


def csearch(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "search.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tiny_gpt2_dir(tmp_path_factory.mktemp("causal_lm"))


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_loaded", {})
    monkeypatch.setattr(registry, "_allowed", set())


def test_conv1d_to_linear_keeps_the_outputs() -> None:
    model = tiny_gpt2(50).eval()
    x = torch.randint(0, 50, (2, 12))
    with torch.no_grad():
        before = model(input_ids=x).logits
        conv1d_to_linear(model)
        after = model(input_ids=x).logits
    assert isinstance(model.transformer.h[0].attn.c_attn, torch.nn.Linear)
    assert model.transformer.h[0].attn.c_attn.weight.shape == (96, 32)  # [out, in]
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def llama_dir(model_dir: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama (grouped KV heads, tied embeddings) beside the same tokenizer."""
    import shutil

    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("llama") / "tiny-llama"
    shutil.copytree(model_dir[0], out, ignore=shutil.ignore_patterns("*.safetensors",
                                                                      "config.json"))
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, max_position_embeddings=128,
                                 tie_word_embeddings=True, bos_token_id=1,
                                 eos_token_id=1)).save_pretrained(out)
    return out


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_the_workload_serves_the_models_own_forward_pass(
        kind: str, model_dir: tuple[Path, Path], llama_dir: Path) -> None:
    from objectives import load_workload
    from search.study import workload_ref

    d = model_dir[0] if kind == "gpt2" else llama_dir
    w = load_workload(workload_ref(f"causal-lm:{d}", str(model_dir[1])))
    assert not any(type(m).__name__ == "Conv1D" for m in w.model.modules())
    head, emb = w.model.lm.get_output_embeddings(), w.model.lm.get_input_embeddings()
    assert head.weight is emb.weight  # tied, as the user saved it: stored once
    x = w.extras["lm_data"].heldout[:2, :40]
    b, n = x.shape
    with torch.no_grad():
        hf = w.model(x)
        ours = lm_logits(w.model, decoder_forward(w.model, x.reshape(-1),
                                                  torch.arange(n).repeat(b),
                                                  full_attention(None), batch=b))
    torch.testing.assert_close(ours.view(b, n, -1), hf, rtol=1e-4, atol=1e-4)


def test_run_export_and_reload_reproduces_accuracy(model_dir: tuple[Path, Path],
                                                   tmp_path: Path) -> None:
    from objectives.workloads.causal_lm import parse_causal_lm_ref
    from search.export import load

    d, data = model_dir
    db = f"sqlite:///{tmp_path / 'lm.db'}"
    r = csearch("run", "--workload", f"causal-lm:{d}", "--workload-data", str(data),
                "--space", "compression", "--trials", "4", "--study", "lm", "--storage", db,
                "--seed", "3", "--objective", "accuracy:max", "--objective", "throughput_tps:max",
                "--objective", "size_mb:min")
    assert r.returncode == 0, r.stderr
    r = csearch("trials", "--study", "lm", "--storage", db, "--format", "json")
    assert r.returncode == 0, r.stderr
    trials = [t for t in json.loads(r.stdout) if t["state"] == "COMPLETE"]
    assert len(trials) == 4
    assert all({"ttft_ms", "throughput_tps", "perplexity"} <= set(t["metrics"]) for t in trials)
    trial = max(trials, key=lambda t: (t["params"].get("quant.method", "none") != "none",
                                       t["metrics"]["sparsity"]))
    out = tmp_path / "export"
    r = csearch("export", "--study", "lm", "--storage", db, "--trial", str(trial["number"]),
                "-o", str(out))
    assert r.returncode == 0, r.stderr
    meta = json.loads((out / "csearch.json").read_text())
    assert parse_causal_lm_ref(meta["workload"]) == (str(d), str(data))  # absolute paths
    model = load(out)
    w = registry.load_workload(meta["workload"], stored=True)
    acc = w.evaluate(model)
    assert abs(acc - trial["metrics"]["accuracy"]) <= 0.01
    assert not any(type(m).__name__ == "Conv1D" for m in model.modules())
    assert model.lm.get_output_embeddings().weight is model.lm.get_input_embeddings().weight


def _bad(args: list[str], tmp_path: Path, needle: str) -> None:
    db = tmp_path / "bad.db"
    r = csearch("run", *args, "--trials", "1", "--storage", f"sqlite:///{db}")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert needle in lines[0], lines[0]
    assert not db.exists()


def test_bad_user_model_input_is_one_line_and_exit_2(model_dir: tuple[Path, Path],
                                                    tmp_path: Path) -> None:
    d, data = model_dir
    _bad(["--workload", f"causal-lm:{tmp_path / 'nope'}", "--workload-data", str(data)],
         tmp_path, "does not exist")
    _bad(["--workload", f"causal-lm:{d}", "--workload-data", str(tmp_path / "nope.txt")],
         tmp_path, "no such file")
    _bad(["--workload", f"causal-lm:{d}"], tmp_path, "--workload-data")
    _bad(["--workload", "digits-cnn", "--workload-data", str(data)], tmp_path,
         "applies only to a causal-lm")
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert",
                                                  "architectures": ["BertModel"]}))
    _bad(["--workload", f"causal-lm:{bert}", "--workload-data", str(data)], tmp_path,
         "is not a causal LM")


def test_lm_metrics_on_a_non_lm_workload_are_refused(tmp_path: Path) -> None:
    _bad(["--workload", "digits-cnn", "--objective", "accuracy:max",
          "--objective", "ttft_ms:min"], tmp_path, "only for causal-LM workloads")
    _bad(["--workload", "digits-cnn", "--constraint", "throughput_tps>=10"], tmp_path,
         "'throughput_tps' is measured only for causal-LM")


def test_kv_bits_is_searched_only_where_there_is_a_kv_cache(
        model_dir: tuple[Path, Path]) -> None:
    from objectives import load_workload
    from search.study import resolve_space, workload_ref
    from spaces import load_space

    lm = load_workload(workload_ref(f"causal-lm:{model_dir[0]}", str(model_dir[1])))
    assert "quant.kv_bits" in resolve_space(load_space("lm"), lm).names()
    digits = resolve_space(load_space("lm"), load_workload("digits-cnn"))
    assert "quant.kv_bits" not in digits.names() and "quant.method" in digits.names()


def test_a_causal_lm_without_a_budget_gets_room_for_fp32_weights_and_a_kv_pool(
        model_dir: tuple[Path, Path]) -> None:
    """Issue 25: fp32 weights + fp16 KV blocks for every client's longest sequence + one
    step's workspace, rounded up to 3 digits, instead of a classifier's 2x the weights;
    the baseline is served with the split the budget was made of, and fits it."""
    from objectives.lm.budget import lm_default_budget
    from objectives.lm.engine import blocks_for
    from objectives.lm.kv import kv_bytes_per_token
    from objectives.lm.model import lm_shape
    from objectives import evaluate
    from search.study import baseline_config, build_spec, load_context, workload_ref

    d, data = model_dir
    spec = build_spec(workload=workload_ref(f"causal-lm:{d}", str(data)), space="lm",
                      objectives=("accuracy:max",), constraints=(), sampler="random", seed=0,
                      device="cpu", trials=1, timeout=None, memory_budget_mb=None,
                      artifacts=None)
    ctx = load_context(spec)
    w = ctx.workload
    assert w.memory_budget_mb is None
    b = lm_default_budget(w)
    s, shape = w.extras["generation"], lm_shape(w.model)
    longest = max(len(p) for p in w.extras["lm_data"].prompts)
    block = s.block_size * kv_bytes_per_token(shape.n_layers, shape.n_kv_heads,
                                              shape.head_dim, 16)
    assert b.kv_bytes == s.concurrency * blocks_for(longest, s.new_tokens, s.block_size) * block
    # The fp32 weights, a tied output layer (the test model's) counted once.
    state = w.model.state_dict()
    alias = shared_tensors(state)
    fp32 = sum(t.numel() * t.element_size() for k, t in state.items() if k not in alias)
    # ... plus at most the packed file's header (a few bytes per tensor).
    assert alias and fp32 <= b.weight_bytes <= fp32 + 4096 + 512 * len(state)
    assert ctx.budget_mb == b.mb == float(f"{b.mb:.3g}")
    assert "KV pool" in ctx.budget_note
    ev = evaluate(w, baseline_config(w, ctx.baseline_serve), budget_mb=ctx.budget_mb,
                  is_baseline=True)
    assert ev.memory_margin_mb <= 0 and ev.serve_split is None
    assert ev.metrics["max_running"] == min(s.concurrency, s.n_requests)
