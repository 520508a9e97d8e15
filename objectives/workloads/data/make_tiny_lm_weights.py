"""Regenerate `tiny_lm.safetensors`, the shipped `tiny-lm` weights (run by hand; csearch
never runs this):

    python objectives/workloads/data/make_tiny_lm_weights.py

Trains the base model exactly as csearch does at first use without the file (seed 0,
`train_tiny_lm`), stores it in fp16, and prints the held-out next-token accuracy and
perplexity of the trained fp32 model and of the fp16 file read back as fp32 (they agree
to within the evaluation's noise), then the file's sha256. Paste that digest into
`_WEIGHTS_SHA256` in objectives/workloads/tiny_lm.py: a file with another digest is not
loaded. Training is seeded; on other CPUs or thread counts float reductions may round
differently, so the digest is that of the committed file, not a promise of bit equality.
"""

import hashlib
import sys
import time
from pathlib import Path

from safetensors.torch import save_file

from objectives.lm.workload import next_token_metrics
from objectives.workloads.tiny_lm import (WEIGHTS_FILE, _data, build_tiny_lm,
                                          shipped_weights, train_tiny_lm)
from objectives.lm.corpus import windows


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else WEIGHTS_FILE
    t0 = time.perf_counter()
    trained = train_tiny_lm(seed=0).eval()
    print(f"trained in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    state = {k: v.detach().half().contiguous() for k, v in trained.state_dict().items()}
    save_file(state, str(out), metadata={"workload": "tiny-lm", "seed": "0",
                                         "dtype": "float16"})
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    tok, _, held_ids = _data(0)
    held = windows(held_ids, 257, 48)  # the workload's evaluation windows
    back = build_tiny_lm(tok.vocab_size)
    back.load_state_dict(shipped_weights(out, digest))
    for name, m in (("trained fp32", trained), ("fp16 file as fp32", back.eval())):
        r = next_token_metrics(m, held, 16)
        print(f"{name}: accuracy {r['accuracy']:.4f}, perplexity {r['perplexity']:.3f}",
              file=sys.stderr)
    print(f"{out}: {out.stat().st_size} bytes, sha256 {digest}", file=sys.stderr)
    print(digest)


if __name__ == "__main__":
    main()
