"""A plugin causal LM (`module:factory`) without its own memory budget: a random 2-layer
Llama on random tokens. Splits and budgets depend on its shapes, not on its weights."""

from __future__ import annotations

import torch

from objectives import Workload
from objectives.lm.model import CausalLM
from objectives.lm.replay import GenerationSettings
from objectives.lm.workload import LMData, make_lm_workload

REF = "tests.unit.lm_split_workload:make_workload"
VOCAB = 48


def make_workload() -> Workload:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, tie_word_embeddings=False)
    model = CausalLM(LlamaForCausalLM(cfg)).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (4000,), generator=g)
    prompts = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in (9, 14, 20, 12)]
    data = LMData(train=ids[:33 * 32].view(32, 33), heldout=ids[2000:2000 + 33 * 8].view(8, 33),
                  prompts=prompts)
    return make_lm_workload("split-lm", model, data, batch_size=8,
                            settings=GenerationSettings(new_tokens=4, block_size=8,
                                                        n_requests=8, concurrency=4))
