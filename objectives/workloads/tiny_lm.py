"""`tiny-lm`: a 1.6M-parameter Llama-style character-level decoder trained on the King
James Bible (public domain, 4.1M characters shipped as data/kjv.txt.xz).

Its trained weights ship as data/tiny_lm.safetensors (fp16, built by
data/make_tiny_lm_weights.py) and are checked against their sha256 at load. When that
file is absent or differs, the model is trained at first use instead (a fixed number of
AdamW steps on random 128-character windows of the training lines: 95% of the verses,
the rest held out by hash; a few minutes on 2 CPU cores) and cached on disk keyed by
workload name, seed and code version.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from ..lm.corpus import CharTokenizer, kjv_text, split_lines, windows
from ..lm.model import CausalLM
from ..lm.replay import GenerationSettings
from ..lm.workload import LMData, make_lm_workload
from ..progress import report_stage
from ..workload import Workload
from ._cache import cached_state_dict, cached_tensors

__all__ = ["TINY_LM_SHAPE", "WEIGHTS_FILE", "build_tiny_lm", "make_tiny_lm_workload",
           "shipped_weights", "train_lm", "train_tiny_lm"]

_CODE_VERSION = 1
# hidden, layers, heads, kv heads, MLP width
TINY_LM_SHAPE = (192, 4, 6, 2, 512)
_SEQ, _BATCH, _STEPS, _LR = 128, 32, 400, 3e-3
# The replay: 48 requests (three rounds of the 16 clients), so that a trial of the default
# study stays a few seconds on 2 cores (benchmarks/RESULTS.md, issue 24).
_REPLAY = GenerationSettings(n_requests=48)
# The shipped weights (seed 0) and the sha256 of that file, as make_tiny_lm_weights.py
# printed it: a file with any other digest is not loaded.
WEIGHTS_FILE = Path(__file__).resolve().parent / "data" / "tiny_lm.safetensors"
_WEIGHTS_SHA256 = "42b31f98e627a4d209b42bde64436ebc82bfeb2620d1c496ed356434caf2d92a"


def build_tiny_lm(vocab_size: int, shape: tuple[int, int, int, int, int] = TINY_LM_SHAPE
                  ) -> CausalLM:
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, heads, kv_heads, mlp = shape
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=mlp,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=512, tie_word_embeddings=False, attn_implementation="sdpa",
    )
    return CausalLM(LlamaForCausalLM(config))


def train_lm(model: CausalLM, train_ids: torch.Tensor, *, steps: int = _STEPS,
             batch: int = _BATCH, seq: int = _SEQ, lr: float = _LR, seed: int = 0,
             on_step: Callable[[int, int], None] | None = None) -> None:
    """Next-token cross-entropy, AdamW, linear warm-up then cosine decay. `on_step(done,
    steps)` after each step: training at first use takes minutes (progress)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    model.train()
    for step in range(steps):
        starts = torch.randint(0, len(train_ids) - seq - 1, (batch,), generator=g).tolist()
        x = torch.stack([train_ids[s:s + seq + 1] for s in starts])
        loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if on_step is not None:
            on_step(step + 1, steps)
    model.eval()


def _data(seed: int) -> tuple[CharTokenizer, torch.Tensor, torch.Tensor]:
    text = kjv_text()
    tok = CharTokenizer.for_text(text)
    train, held = split_lines(text)
    d = cached_tensors(f"tiny-lm-data-v{_CODE_VERSION}", lambda: {
        "train": tok.encode_tensor(train), "heldout": tok.encode_tensor(held)})
    return tok, d["train"].long(), d["heldout"].long()


def _prompts(tok: CharTokenizer, held: str, n: int = 48) -> list[list[int]]:
    """Beginnings (24-72 characters, at a word boundary) of the first `n` held-out verses
    long enough; verses open alike ("And the LORD said unto"), so prefixes also recur."""
    out = []
    for i, line in enumerate(held.splitlines()):
        if len(line) < 80:
            continue
        cut = line.rfind(" ", 0, 24 + (i * 7) % 49)
        out.append(tok.encode(line[:cut + 1]))
        if len(out) == n:
            break
    return out


def train_tiny_lm(seed: int = 0) -> CausalLM:
    """The base model trained from scratch: what the shipped weights were built from."""
    tok, train_ids, _ = _data(seed)
    torch.manual_seed(seed)
    m = build_tiny_lm(tok.vocab_size)
    train_lm(m, train_ids, seed=seed, on_step=lambda done, total: report_stage(
        "training tiny-lm, first use: step", done, total))
    return m


def shipped_weights(path: Path = WEIGHTS_FILE, sha256: str = _WEIGHTS_SHA256
                    ) -> dict[str, torch.Tensor] | None:
    """The shipped state dict in fp32, or None when the file is absent or its sha256 is
    not `sha256` (a damaged or foreign file is never loaded)."""
    from safetensors.torch import load

    try:
        raw = path.read_bytes()
    except OSError:
        return None
    if not sha256 or hashlib.sha256(raw).hexdigest() != sha256:
        return None
    return {k: v.float() for k, v in load(raw).items()}


def make_tiny_lm_workload(seed: int = 0) -> Workload:
    tok, train_ids, held_ids = _data(seed)
    model = build_tiny_lm(tok.vocab_size)
    state = shipped_weights() if seed == 0 else None
    if state is None:
        state = cached_state_dict(f"tiny-lm-s{seed}-v{_CODE_VERSION}",
                                  lambda: train_tiny_lm(seed))
    model.load_state_dict(state)
    model.eval()
    _, held = split_lines(kjv_text())
    data = LMData(
        train=windows(train_ids, _SEQ + 1, 8 * 16, seed=seed + 1),
        heldout=windows(held_ids, 257, 48),
        prompts=_prompts(tok, held),
        unigram=torch.bincount(train_ids, minlength=tok.vocab_size),
    )
    return make_lm_workload("tiny-lm", model, data, batch_size=16, memory_budget_mb=6.8,
                            settings=_REPLAY, extras={"tokenizer": tok})
