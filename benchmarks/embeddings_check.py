"""Issue 23 acceptance: /v1/embeddings of a deployed minilm trial vs search.export.load."""
import sys, time
import torch, torch.nn.functional as F
import openai
from search.export import export_trial, load
from search.registry import Registry
from search.serving import RegistrySource, start_server
import optuna

db, trial = sys.argv[1], int(sys.argv[2])
study = optuna.load_study(study_name="m", storage=db)
export_trial(study, trial, "/tmp/mtest/exp")
model = load("/tmp/mtest/exp")
from objectives import load_workload
w = load_workload("minilm")
tok = w.extras["tokenizer"]
sentences = ["The quick brown fox jumps over the lazy dog.", "A model served as text, streamed."]
enc = tok(sentences, truncation=True, max_length=w.extras["max_tokens"])
items = [torch.tensor(i) for i in enc["input_ids"]]
with torch.inference_mode():
    want = model(w.batch(items))
reg = Registry(db)
try:
    v = reg.deploy(study, trial, "mini")
except Exception as e:
    print("deploy:", e); v = None
with start_server(RegistrySource(db, "mini", v.version if v else 1)) as srv:
    c = openai.OpenAI(base_url=srv.url + "/v1", api_key="x")
    r = c.embeddings.create(model="mini", input=sentences)
    got = torch.tensor([d.embedding for d in r.data])
    print("cosine:", F.cosine_similarity(got.double(), want.double(), dim=-1).tolist())
