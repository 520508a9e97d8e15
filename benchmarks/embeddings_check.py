"""Issue 23 acceptance: a deployed `minilm` trial's `/v1/embeddings` vectors against those
of `search.export.load` of the same trial (cosine similarity per sentence).

    python benchmarks/embeddings_check.py --storage sqlite:///m.db --study m --trial 0

The study is any minilm study with stored artifacts (e.g. `csearch run --workload minilm
--space compression --trials 1 --study m --storage sqlite:///m.db`). The trial is deployed
as model `embed-check` (a new version each run) and served on a free port.
"""

from __future__ import annotations

import argparse
import tempfile

import optuna
import torch
import torch.nn.functional as F

SENTENCES = ["The quick brown fox jumps over the lazy dog.",
             "A model served as text, streamed to its client."]


def main() -> None:
    import openai

    from objectives import load_workload
    from search.export import export_trial, load
    from search.registry import Registry
    from search.serving import RegistrySource, start_server

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--storage", required=True)
    ap.add_argument("--study", required=True)
    ap.add_argument("--trial", type=int, required=True)
    a = ap.parse_args()
    study = optuna.load_study(study_name=a.study, storage=a.storage)
    w = load_workload("minilm")
    tok = w.extras["tokenizer"]
    items = [torch.tensor(i) for i in tok(SENTENCES, truncation=True,
                                          max_length=w.extras["max_tokens"])["input_ids"]]
    with tempfile.TemporaryDirectory() as out:
        export_trial(study, a.trial, out)
        with torch.inference_mode():
            want = load(out)(w.batch(items))
    version = Registry(a.storage).deploy(study, a.trial, "embed-check").version
    with start_server(RegistrySource(a.storage, "embed-check", version)) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none")
        got = client.embeddings.create(model="embed-check", input=SENTENCES)
    vec = torch.tensor([d.embedding for d in got.data])
    cos = F.cosine_similarity(vec.double(), want.double(), dim=-1)
    print(f"trial {a.trial} (v{version}): cosine per sentence "
          + ", ".join(f"{c:.6f}" for c in cos.tolist()))


if __name__ == "__main__":
    main()
