"""A user's own causal LM, made in a test: a tiny GPT-2 saved with `save_pretrained`
beside a byte-level BPE tokenizer trained on a text file (with a chat template, so the
server's chat route has something to apply)."""

from __future__ import annotations

from pathlib import Path

import torch

from objectives.lm.corpus import kjv_text

CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant: {% endif %}")


def tiny_gpt2(vocab: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=128, n_embd=32, n_layer=2,
                                      n_head=2, n_inner=64, bos_token_id=1, eos_token_id=1))


def tiny_gpt2_dir(root: Path) -> tuple[Path, Path]:
    """(model directory, text file): the tokenizer trained on the text and a GPT-2 of 2
    layers briefly trained on it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    text = "\n".join(kjv_text().splitlines()[:1500]) + "\n"
    data = root / "my.txt"
    data.write_text(text)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(text.splitlines(), trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")
    fast.chat_template = CHAT_TEMPLATE
    out = root / "tiny-gpt2"
    fast.save_pretrained(out)
    model = tiny_gpt2(len(fast))
    ids = torch.tensor(fast(text)["input_ids"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        starts = torch.randint(0, len(ids) - 33, (8,), generator=g).tolist()
        x = torch.stack([ids[s:s + 33] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(out)
    return out, data
