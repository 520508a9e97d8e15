"""Sentence encoders are served as OpenAI embeddings: strings in, the model's own vectors
out (what the workload's tokenizer and the model compute in this process), in both of
OpenAI's encodings, through the official `openai` client."""

from __future__ import annotations

import httpx
import pytest
import torch
import torch.nn.functional as F

from search.serving import WorkloadSource, start_server

SERVE = {"batch_size": 8, "threads": 1, "cache_ratio": 0.1, "memory_ratio": 0.2,
         "memory_budget_mb": 300}
SENTENCES = ["The quick brown fox jumps over the lazy dog.",
             "A model served as text, streamed to its client."]


@pytest.fixture(scope="module")
def minilm():
    from objectives import load_workload

    return load_workload("minilm")


@pytest.fixture(scope="module")
def server():
    with start_server(WorkloadSource("minilm", SERVE)) as srv:
        yield srv


def test_the_openai_client_gets_the_models_own_embeddings(server, minilm):
    import openai

    tok = minilm.extras["tokenizer"]
    items = [torch.tensor(i) for i in tok(SENTENCES, truncation=True,
                                          max_length=minilm.extras["max_tokens"])["input_ids"]]
    with torch.inference_mode():
        want = minilm.model(minilm.batch(items))
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    got = client.embeddings.create(model="minilm", input=SENTENCES)  # base64 on the wire
    floats = client.embeddings.create(model="minilm", input=SENTENCES, encoding_format="float")
    for r in (got, floats):
        vec = torch.tensor([d.embedding for d in r.data])
        assert vec.shape == want.shape
        assert F.cosine_similarity(vec.double(), want.double(), dim=-1).min() >= 0.999
    assert got.usage.prompt_tokens == sum(len(i) for i in items)


def test_bad_embedding_requests_are_400_in_the_error_schema(server):
    for body, status in (({"model": "minilm", "input": ""}, 400),
                         ({"model": "minilm", "input": []}, 400),
                         ({"model": "minilm", "input": 3}, 400),
                         ({"model": "other", "input": "x"}, 404)):
        r = httpx.post(server.url + "/v1/embeddings", json=body, timeout=30)
        assert r.status_code == status, r.text
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
