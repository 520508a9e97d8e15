"""Issue 25's int4 acceptance: decode tokens/s at batch 1 and packed size, fp32 against
csearch's `int4_weight_only` (and `int4_hqq`), on a randomly initialised 135M-parameter
Llama (30 layers, hidden 576, 9 query / 3 KV heads, MLP 1536, vocabulary 49,152, tied
embeddings). Speed and size do not depend on the weights.

The model is saved with `save_pretrained` (the input's bytes: the tied head stored once)
and loaded with csearch's causal-LM loader, which keeps the head tied. Quantization is
csearch's own: `quantize_weights` -> `pack_state` (the artifact's bytes, the tied table
once) -> `apply_runtime` with the stored codes (the int4 kernel for every decoder Linear;
the tied table int8 per row, which the head runs on the int8 weight-only kernel).
Decoding is Hugging Face's KV-cached forward, greedy, one token at a time; fp32 and int4
are timed in alternating rounds in one process, and the median round counts.

    nice -n 10 python benchmarks/int4_decode.py --threads 2 --tokens 48 --rounds 3
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from objectives.lm.model import CausalLM  # noqa: E402
from objectives.pack import pack_state  # noqa: E402
from objectives.quantize import apply_runtime, quantize_weights  # noqa: E402
from objectives.workloads.causal_lm import _load_model  # noqa: E402
from objectives.weightonly import Int4WeightOnlyLinear  # noqa: E402
from spaces import QuantConfig  # noqa: E402

CONFIG = dict(num_hidden_layers=30, hidden_size=576, num_attention_heads=9,
              num_key_value_heads=3, intermediate_size=1536, vocab_size=49152,
              tie_word_embeddings=True, max_position_embeddings=2048)


def save_model(d: Path) -> int:
    """A random tied-embedding Llama saved as a user would; returns its safetensors bytes."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(**CONFIG)).eval()
    lm.save_pretrained(d, safe_serialization=True)
    return sum(p.stat().st_size for p in d.glob("*.safetensors"))


@torch.no_grad()
def decode_tps(model: CausalLM, prompt: torch.Tensor, tokens: int) -> float:
    """Greedy tokens/s of `tokens` decode steps after the prompt's prefill."""
    lm = model.lm
    out = lm(input_ids=prompt, use_cache=True)
    past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
    t0 = time.perf_counter()
    for _ in range(tokens):
        out = lm(input_ids=nxt, past_key_values=past, use_cache=True)
        past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
    return tokens / (time.perf_counter() - t0)


def quantized(model: CausalLM, method: str) -> tuple[CausalLM, int]:
    """csearch's quantization of a copy: the served model and its packed bytes."""
    m = copy.deepcopy(model)
    cfg = QuantConfig(method)
    codes = quantize_weights(m, cfg)
    artifact = pack_state(m.state_dict(), codes)
    m = apply_runtime(m, cfg, torch.device("cpu"), quantized=codes)
    kernels = sum(isinstance(x, Int4WeightOnlyLinear) for x in m.modules())
    linears = sum(type(x) is torch.nn.Linear for x in m.modules())
    assert kernels > 0 and linears == 0, (kernels, linears)  # the head too: int8 kernel
    return m.eval(), len(artifact)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--methods", default="int4_weight_only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        input_bytes = save_model(Path(tmp))
        base = _load_model(Path(tmp))
    fp32_artifact = len(pack_state(base.state_dict(), {}))
    models = {"fp32": base}
    sizes = {"fp32": fp32_artifact}
    quantize_s = {}
    for method in args.methods.split(","):
        t0 = time.perf_counter()
        models[method], sizes[method] = quantized(base, method)
        quantize_s[method] = time.perf_counter() - t0
    prompt = torch.randint(0, CONFIG["vocab_size"], (1, args.prompt),
                           generator=torch.Generator().manual_seed(1))
    for m in models.values():  # warm-up
        decode_tps(m, prompt, 4)
    tps: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(args.rounds):
        for name, m in models.items():
            tps[name].append(decode_tps(m, prompt, args.tokens))
    med = {k: statistics.median(v) for k, v in tps.items()}
    report = {
        "threads": args.threads, "decode_tokens": args.tokens, "prompt": args.prompt,
        "input_safetensors_mb": input_bytes / 1e6,
        "packed_mb": {k: v / 1e6 for k, v in sizes.items()},
        "quantize_and_pack_s": quantize_s,
        "decode_tps_rounds": tps, "decode_tps_median": med,
        "speedup_vs_fp32": {k: med[k] / med["fp32"] for k in med},
        "smaller_than_input": {k: input_bytes / v for k, v in sizes.items()},
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
