"""Issue 25's honest-size acceptance: on a tied-embedding causal LM, the uncompressed
trial's `size_mb` is within 1 % of the user's safetensors bytes.

Builds the issue's 135M Llama config (30 layers, hidden 576, 9 query / 3 KV heads, MLP
1536, vocabulary 49,152, tied embeddings), randomly initialised (size does not depend on
the weights), saves it with `save_pretrained`, loads it as `causal-lm:` does, and packs
it as `objectives.evaluate` does for the baseline (no quantization, no sparsity: the
same `quantize_weights` and `pack_state` calls). For contrast it also packs the model
with the output layer untied (what csearch did before), and an int8 trial's artifact
(every Linear and the embedding on int8; the tied head stored once, as an alias).

    nice -n 10 python benchmarks/tied_size.py --dir /tmp/tied135m
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/tied135m")
    args = ap.parse_args()
    from transformers import LlamaConfig, LlamaForCausalLM

    from objectives.pack import pack_state
    from objectives.quantize import quantize_weights
    from objectives.workloads.causal_lm import _load_model
    from spaces import Config, QuantConfig

    d = Path(args.dir)
    if not any(d.glob("*.safetensors")):
        torch.manual_seed(0)
        LlamaForCausalLM(LlamaConfig(
            vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
            num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
            tie_word_embeddings=True)).save_pretrained(d)
    given = sum(f.stat().st_size for f in d.glob("*.safetensors"))
    t = time.perf_counter()
    model = _load_model(d)
    load_s = time.perf_counter() - t
    head, emb = model.lm.get_output_embeddings(), model.lm.get_input_embeddings()
    out: dict[str, object] = {"input_bytes": given, "tied_after_load": head.weight is emb.weight,
                              "load_s": round(load_s, 1)}

    def packed(m: torch.nn.Module, quant: QuantConfig) -> int:
        q = quantize_weights(m, quant)
        return len(pack_state(m.state_dict(), q, set()))

    t = time.perf_counter()
    out["baseline_bytes"] = packed(model, Config().quant)
    out["baseline_pack_s"] = round(time.perf_counter() - t, 1)
    out["baseline_over_input"] = out["baseline_bytes"] / given
    untied = copy.deepcopy(model)
    uh = untied.lm.get_output_embeddings()
    uh.weight = torch.nn.Parameter(uh.weight.detach().clone())
    out["untied_bytes"] = packed(untied, Config().quant)
    out["untied_over_input"] = out["untied_bytes"] / given
    del untied
    out["int8_dynamic_bytes"] = packed(copy.deepcopy(model), QuantConfig(method="int8_dynamic"))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
