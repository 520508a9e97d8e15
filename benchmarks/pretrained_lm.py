"""Issue 25 acceptance (study start and trial cost): a 135M-parameter Llama-architecture
model that nobody here trained, searched with `--space lm` on a ~600 kB text.

    nice -n 10 python benchmarks/pretrained_lm.py [--trials 3] [--dir D] [--timeout S]

Builds, offline, in D (default: a temporary folder):
  * model/: a randomly initialised transformers `LlamaForCausalLM` with the issue's config
    (30 layers, hidden 576, 9 query heads, 3 KV heads, MLP 1536, vocabulary 49,152, tied
    embeddings), saved with `save_pretrained` (safetensors), with a byte-level BPE
    tokenizer trained on the text (`tokenizers`, no hub access). Speed and cost do not
    depend on the weights;
  * text.txt: the first 600 kB of the King James Bible that csearch ships;
then runs `csearch run --workload causal-lm:model --workload-data text.txt --space lm
--trials N` and reads the study: the start stages' seconds (`start_seconds`: load,
baseline, sensitivity, held-out windows used), each trial's seconds from its stored
timestamps, its state, its recovery steps and any early stop. Prints a JSON summary (also
written to D/summary.json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import CLI, env, load, machine, now

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
CONFIG = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
              num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
              max_position_embeddings=2048)
TEXT_BYTES = 600_000


def build(d: Path) -> tuple[Path, Path, dict]:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from objectives.lm.corpus import kjv_text

    text = kjv_text()[:TEXT_BYTES]
    data = d / "text.txt"
    data.write_text(text, encoding="utf-8")
    model_dir = d / "model"
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(**CONFIG))
    lm.save_pretrained(model_dir, safe_serialization=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(text.splitlines(), trainers.BpeTrainer(
        vocab_size=CONFIG["vocab_size"], special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(
        model_dir)
    files = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
    return model_dir, data, {"params": sum(p.numel() for p in lm.parameters()),
                             "safetensors_bytes": files, "text_bytes": len(text.encode()),
                             "tokenizer_vocab": tok.get_vocab_size()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--timeout", type=float, default=None,
                    help="csearch run --timeout: start no trial after this many seconds")
    ap.add_argument("--kill-after", type=float, default=None,
                    help="stop csearch run after this many seconds and report what finished")
    a = ap.parse_args()
    d = a.dir or Path(tempfile.mkdtemp(prefix="csearch-pretrained-"))
    d.mkdir(parents=True, exist_ok=True)
    t0 = now()
    model_dir, data, built = build(d)
    build_s = now() - t0
    url = f"sqlite:///{d / 'studies.db'}"
    args = ["run", "--workload", f"causal-lm:{model_dir}", "--workload-data", str(data),
            "--space", "lm", "--trials", str(a.trials), "--study", "pretrained",
            "--storage", url, "--device", "cpu", "--log-format", "text",
            *(["--timeout", str(a.timeout)] if a.timeout else [])]
    t0 = now()
    try:
        r = subprocess.run([*CLI, *args], cwd=d, capture_output=True, text=True,
                           env=env(PYTHONPATH=ROOT, CSEARCH_CACHE_DIR=str(d / "cache")),
                           timeout=a.kill_after)
        out, err, code = r.stdout, r.stderr, r.returncode
    except subprocess.TimeoutExpired as e:
        def text(b: bytes | str | None) -> str:
            return b.decode() if isinstance(b, bytes) else b or ""
        out, err, code = text(e.stdout), text(e.stderr), None
    wall = now() - t0
    (d / "run.log").write_text(out + "\n--- stderr ---\n" + err)
    if code:
        raise SystemExit(f"csearch run failed ({code}): {err.strip()[-1500:]}")
    study = load("pretrained", url)
    start = study.user_attrs.get("start_seconds", {})
    trials = []
    for t in study.trials:
        secs = ((t.datetime_complete - t.datetime_start).total_seconds()
                if t.datetime_complete and t.datetime_start else None)
        m = t.user_attrs.get("metrics") or {}
        trials.append({"number": t.number, "state": t.state.name, "seconds": secs,
                       "train.steps": t.params.get("train.steps"),
                       "early_stop": t.user_attrs.get("early_stop"),
                       "accuracy": m.get("accuracy"), "size_mb": m.get("size_mb"),
                       "eval_seconds": m.get("eval_seconds")})
    done = [t["seconds"] for t in trials if t["seconds"] is not None]
    summary = {
        "machine": machine(), "dir": str(d), "model": built, "build_seconds": round(build_s, 1),
        "start_seconds": start,
        "start_total_seconds": round(sum(start.get(k, 0.0) for k in
                                         ("load", "baseline", "sensitivity")), 1),
        "run_wall_seconds": round(wall, 1), "killed_after_limit": code is None,
        "trials": trials,
        "median_trial_seconds": statistics.median(done) if done else None,
        "baseline": {k: v for k, v in (study.user_attrs.get("baseline") or {}).items()
                     if k in ("accuracy", "perplexity", "size_mb", "eval_seconds")},
        "start_line": next((ln for ln in err.splitlines() + out.splitlines()
                            if "start:" in ln), None),
    }
    (d / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
