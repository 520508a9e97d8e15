"""`causal-lm:MODEL_DIR?data=TEXT_FILE`: the user's own local Hugging Face causal LM
(config, safetensors weights, tokenizer) judged on a text file of their own, offline.

The reference names both paths (absolute), so a study's stored spec is all a worker or
`search.export.load` needs to rebuild the workload. Only safetensors weights are read
and no model code is imported (`trust_remote_code` stays off), so resolving a reference
read from a database runs nothing but transformers' own classes.

The text's lines are split by hash (1 in 10 held out): held-out windows give next-token
accuracy and perplexity, training windows the recovery fine-tune, and the beginnings of
held-out lines the serve replay's prompts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import WorkloadError
from ..lm.corpus import split_lines, windows
from ..lm.model import LM_FAMILIES, CausalLM, conv1d_to_linear
from ..lm.workload import LMData, make_lm_workload
from ..workload import Workload

__all__ = ["CAUSAL_LM_PREFIX", "causal_lm_ref", "is_causal_lm_ref", "make_causal_lm_workload",
           "parse_causal_lm_ref", "recovery_steps"]

CAUSAL_LM_PREFIX = "causal-lm:"
_DATA_SEP = "?data="
_MAX_CHARS = 4_000_000  # text read from the file: plenty for evaluation and recovery
_TRAIN_WINDOWS, _HELD_WINDOWS, _PROMPTS = 128, 48, 48
# Recovery compute a trial may spend at most, in training FLOPs (6 x parameters x tokens):
# a 135M-parameter model (163M with its head untied) gets 3 optimizer steps of 16 x 128
# tokens, a 10M one 56, smaller ones the space's top (64). A step of a large model costs
# what an epoch of a small one does, so its `train.steps` range is sized to the model,
# not to the text (benchmarks/RESULTS.md, issue 25).
_RECOVERY_FLOPS = 7e12


def recovery_steps(n_params: int, tokens_per_step: int, top: int = 64) -> int:
    """The most optimizer steps a trial's recovery takes for a model of `n_params`."""
    return max(2, min(top, int(_RECOVERY_FLOPS // (6 * n_params * tokens_per_step))))


def is_causal_lm_ref(ref: str) -> bool:
    return ref.startswith(CAUSAL_LM_PREFIX)


def parse_causal_lm_ref(ref: str) -> tuple[str, str]:
    """`causal-lm:DIR?data=FILE` -> (DIR, FILE); raises `WorkloadError` when malformed."""
    body = ref[len(CAUSAL_LM_PREFIX):]
    model_dir, sep, data = body.rpartition(_DATA_SEP)
    if not sep:
        model_dir, data = body, ""
    if not model_dir:
        raise WorkloadError(f"workload {ref!r} names no model directory; "
                            "use --workload causal-lm:MODEL_DIR --workload-data TEXT_FILE")
    if not data:
        raise WorkloadError(f"workload {ref!r} needs a text file: add --workload-data FILE "
                            f"(or write {CAUSAL_LM_PREFIX}MODEL_DIR{_DATA_SEP}FILE)")
    return model_dir, data


def causal_lm_ref(model_dir: str | Path, data: str | Path) -> str:
    """The canonical reference (absolute paths), after checking both paths and that the
    directory holds a supported causal LM. Raises `WorkloadError` with what is wrong."""
    d, f = Path(model_dir).expanduser().resolve(), Path(data).expanduser().resolve()
    _check_model_dir(d)
    if not f.is_file():
        raise WorkloadError(f"--workload-data {str(data)!r}: no such file")
    return f"{CAUSAL_LM_PREFIX}{d}{_DATA_SEP}{f}"


def _check_model_dir(d: Path) -> str:
    """The model type of directory `d`, refused unless it is a causal LM csearch runs."""
    if not d.is_dir():
        raise WorkloadError(f"causal-lm model directory {str(d)!r} does not exist")
    try:
        config = json.loads((d / "config.json").read_text())
    except OSError:
        raise WorkloadError(f"{str(d)!r} is not a Hugging Face model directory "
                            "(no config.json)") from None
    except ValueError as e:
        raise WorkloadError(f"{str(d / 'config.json')!r} is not valid JSON: {e}") from None
    model_type = config.get("model_type")
    archs = config.get("architectures") or []
    if model_type not in LM_FAMILIES or (archs and not any(
            a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)):
        what = f"{model_type!r} ({', '.join(archs) or 'no architectures'})"
        raise WorkloadError(f"{str(d)!r} is not a causal LM csearch can serve: model type "
                            f"{what}; supported: causal LMs of type "
                            f"{', '.join(sorted(LM_FAMILIES))}")
    if not any(d.glob("*.safetensors")):
        raise WorkloadError(f"{str(d)!r} has no *.safetensors weights (csearch reads no "
                            "pickled checkpoints); save with save_pretrained(..., "
                            "safe_serialization=True)")
    return str(model_type)


def _load_model(d: Path) -> CausalLM:
    from transformers import AutoModelForCausalLM

    try:
        lm = AutoModelForCausalLM.from_pretrained(
            d, local_files_only=True, use_safetensors=True, trust_remote_code=False,
            dtype=torch.float32)
    except Exception as e:
        raise WorkloadError(f"cannot load the causal LM in {str(d)!r}: "
                            f"{type(e).__name__}: {e}") from e
    conv1d_to_linear(lm)
    # A tied output layer stays tied: it is the embedding's tensor, compressed with it and
    # stored once (see `prunable_layers`), so the baseline is as big as the user's files.
    if getattr(lm.config, "scale_attn_by_inverse_layer_idx", False) or not getattr(
            lm.config, "scale_attn_weights", True):
        raise WorkloadError(f"{str(d)!r}: GPT-2 attention scaling options are not supported")
    return CausalLM(lm).eval()


def _load_tokenizer(d: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(d, local_files_only=True, trust_remote_code=False)
    except Exception as e:
        raise WorkloadError(f"cannot load a tokenizer from {str(d)!r} (save one beside the "
                            f"model): {type(e).__name__}: {e}") from e


def _encode(tok: Any, text: str) -> torch.Tensor:
    return torch.tensor(tok(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


def _prompts(tok: Any, held: str, max_len: int) -> list[list[int]]:
    """Beginnings (4 to 24 tokens) of held-out lines: repeats of common openings make
    prefixes recur, and the Zipf trace repeats whole prompts."""
    out: list[list[int]] = []
    for i, line in enumerate(held.splitlines()):
        ids = tok(line, add_special_tokens=False)["input_ids"]
        n = min(len(ids), 4 + (i * 7) % 21, max_len)
        if n >= 2:
            out.append(list(ids[:n]))
        if len(out) == _PROMPTS:
            break
    return out


def make_causal_lm_workload(model_dir: str, data: str, seed: int = 0) -> Workload:
    """Build the workload of a `causal-lm:` reference (see the module docstring)."""
    d = Path(model_dir)
    _check_model_dir(d)
    try:
        with open(data, encoding="utf-8", errors="replace") as f:
            text = f.read(_MAX_CHARS)
    except OSError as e:
        raise WorkloadError(f"cannot read the workload data {data!r}: {e}") from e
    model = _load_model(d)
    tok = _load_tokenizer(d)
    train, held = split_lines(text, heldout_every=10)
    train_ids, held_ids = _encode(tok, train), _encode(tok, held)
    max_pos = int(getattr(model.lm.config, "max_position_embeddings", None)
                  or getattr(model.lm.config, "n_positions", 1024))
    seq = min(128, max_pos - 1, len(train_ids) - 2)
    held_len = min(257, max_pos, len(held_ids))
    new_tokens = 16
    prompts = _prompts(tok, held, max(2, min(24, max_pos - new_tokens)))
    if seq < 16 or held_len < 17 or len(prompts) < 4:
        raise WorkloadError(
            f"the workload data {data!r} is too short: it gives {len(train_ids)} training "
            f"and {len(held_ids)} held-out tokens and {len(prompts)} prompts (1 line in 10 "
            "is held out); csearch needs at least a few thousand tokens over 40+ lines")
    vocab = int(model.lm.get_input_embeddings().weight.shape[0])
    lm_data = LMData(
        train=windows(train_ids, seq + 1, _TRAIN_WINDOWS, seed=seed + 1),
        heldout=windows(held_ids, held_len, _HELD_WINDOWS),
        prompts=prompts,
        unigram=torch.bincount(train_ids.clamp(max=vocab - 1), minlength=vocab),
    )
    w = make_lm_workload(f"causal-lm:{d.name}", model, lm_data, batch_size=16,
                         extras={"tokenizer": tok})
    n_params = sum(p.numel() for p in model.parameters())
    w.param_ranges = {"train.steps": {"type": "int", "low": 0,
                                      "high": recovery_steps(n_params, 16 * seq)}}
    if model.lm.config.model_type == "gpt2":
        w.groups = {"embeddings": ["*wte", "*wpe"], "attn": ["*attn.*"], "mlp": ["*mlp.*"],
                    "lm_head": ["*lm_head"]}
    if _tied(model):  # the head is the embeddings' tensor: no group of its own
        w.groups = {g: p for g, p in (w.groups or {}).items() if g != "lm_head"}
    return w


def _tied(model: CausalLM) -> bool:
    head, emb = model.lm.get_output_embeddings(), model.lm.get_input_embeddings()
    return head is not None and head.weight is emb.weight
