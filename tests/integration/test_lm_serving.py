"""A language model served as text, the way LLM clients expect: a study on a user's own
causal LM (a tiny GPT-2 with its BPE tokenizer), two trials deployed as versions, and the
real server (`start_server`, a subprocess on a free port) driven by the official `openai`
package, by raw SSE streams and by promote/rollback while streams are in flight."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from lm_fixtures import tiny_gpt2_dir
from search.serving import RegistrySource, start_server

ROOT = Path(__file__).resolve().parents[2]
NAME = "gpt"
SPACE = """
include = ["serving"]
[params."quant.method"]
choices = ["none", "lowbit"]
[params."quant.kv_bits"]
choices = [16, 8]
"""


def csearch(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "search.cli", *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 4-trial study, two trials deployed as versions 1 and 2 of `gpt`, v1 promoted."""
    root = tmp_path_factory.mktemp("lm_serving")
    model_dir, data = tiny_gpt2_dir(root)
    space = root / "space.toml"
    space.write_text(SPACE)
    db = f"sqlite:///{root / 'lm.db'}"
    common = ("--study", "lm", "--storage", db)
    csearch("run", "--workload", f"causal-lm:{model_dir}", "--workload-data", str(data),
            "--space", str(space), "--trials", "4", "--sampler", "random", "--seed", "5",
            "--objective", "accuracy:max", "--objective", "throughput_tps:max",
            "--objective", "size_mb:min", "--artifacts", str(root / "artifacts"), *common)
    trials = [t for t in json.loads(csearch("trials", "--format", "json", *common).stdout)
              if t["state"] == "COMPLETE"]
    assert len(trials) >= 2
    first = trials[0]
    other = next((t for t in trials[1:] if (t["params"].get("quant.kv_bits"),
                                            t["params"].get("quant.method")) !=
                  (first["params"].get("quant.kv_bits"), first["params"].get("quant.method"))),
                 trials[1])
    for t in (first, other):
        csearch("deploy", "--trial", str(t["number"]), "--name", NAME, "--force", *common)
    csearch("promote", NAME, "1", "--storage", db)
    samples = _samples(db, first["number"])
    return {"db": db, "trials": (first, other), "samples": samples, "model_dir": model_dir}


def _samples(db: str, number: int) -> list[dict[str, Any]]:
    import optuna

    study = optuna.load_study(study_name="lm", storage=db)
    return study.trials[number].user_attrs["replay_samples"]


@pytest.fixture(scope="module")
def server(deployed: dict[str, Any]):
    with start_server(RegistrySource(deployed["db"], NAME), poll_s=0.3) as srv:
        yield srv


@pytest.fixture(scope="module")
def tokenizer(deployed: dict[str, Any]):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(deployed["model_dir"], local_files_only=True)


def _client(server: Any):
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)


def _stream_raw(url: str, body: dict[str, Any], stop_after: int | None = None
                ) -> list[dict[str, Any] | str]:
    """POST a streaming completion; the parsed `data:` chunks (the last is "[DONE]")."""
    chunks: list[dict[str, Any] | str] = []
    with httpx.stream("POST", url + "/v1/completions", json={**body, "stream": True},
                      timeout=60) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            chunks.append(data if data == "[DONE]" else json.loads(data))
            if stop_after is not None and len(chunks) >= stop_after:
                break  # leaving the `with` closes the connection mid-stream
    return chunks


def _gauge(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics").text
    m = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def test_the_openai_client_gets_a_completion_a_stream_and_a_chat(server, tokenizer):
    client = _client(server)
    models = client.models.list()
    assert [m.id for m in models.data] == [NAME]
    assert httpx.get(server.url + "/v1/models").json()["data"][0]["version"] == 1

    done = client.completions.create(model=NAME, prompt="And the LORD said", max_tokens=8,
                                     temperature=0, extra_body={"ignore_eos": True})
    assert done.choices[0].finish_reason == "length"
    assert done.usage.completion_tokens == 8
    assert done.usage.prompt_tokens == len(tokenizer("And the LORD said")["input_ids"])
    assert done.system_fingerprint == "csearch-v1"

    stream = client.completions.create(model=NAME, prompt="And the LORD said", max_tokens=8,
                                       temperature=0, stream=True,
                                       stream_options={"include_usage": True},
                                       extra_body={"ignore_eos": True})
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == done.choices[0].text  # greedy: the stream says what the completion did
    assert chunks[-1].usage.completion_tokens == 8
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"

    chat = client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "Who spake unto Moses?"}],
        max_tokens=6, temperature=0.7, seed=3)
    assert chat.choices[0].message.role == "assistant"
    again = client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "Who spake unto Moses?"}],
        max_tokens=6, temperature=0.7, seed=3)
    assert again.choices[0].message.content == chat.choices[0].message.content  # seeded


def test_temperature_zero_serves_the_tokens_the_trials_replay_generated(
        server, deployed, tokenizer):
    first = deployed["trials"][0]
    if "int8" in json.dumps(first["params"]):
        pytest.skip("int8 activations are quantized per batch: tokens may differ")
    for s in deployed["samples"][:4]:
        r = httpx.post(server.url + "/v1/completions", timeout=60, json={
            "model": NAME, "prompt": s["prompt_ids"], "max_tokens": len(s["tokens"]),
            "temperature": 0, "ignore_eos": True})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == tokenizer.decode(s["tokens"],
                                                                  skip_special_tokens=True)


@pytest.mark.parametrize("body, status, param", [
    ({"prompt": "x", "max_tokens": 100_000}, 400, "max_tokens"),
    ({"prompt": ""}, 400, "prompt"),
    ({"prompt": []}, 400, "prompt"),
    ({"prompt": "x", "max_tokens": "many"}, 400, "max_tokens"),
    ({"prompt": 5}, 400, "prompt"),
    ({"prompt": [10**9]}, 400, "prompt"),
    ({"prompt": "x", "n": 2}, 400, "n"),
    ({"prompt": "x", "model": "nope"}, 404, "model"),
])
def test_bad_requests_get_one_error_schema_and_the_server_keeps_serving(server, body, status,
                                                                        param):
    r = httpx.post(server.url + "/v1/completions", json={"model": NAME, **body}, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["param"] == param
    assert err["message"]
    ok = httpx.post(server.url + "/v1/completions", timeout=30,
                    json={"model": NAME, "prompt": "In the", "max_tokens": 2})
    assert ok.status_code == 200


def test_a_client_that_drops_a_stream_frees_its_kv_blocks(server):
    idle = _gauge(server.url, "csearch_serve_kv_blocks_in_use")
    assert _gauge(server.url, "csearch_serve_kv_blocks_total") > 0
    chunks = _stream_raw(server.url, {"model": NAME, "prompt": "And God said", "max_tokens": 90,
                                      "temperature": 0, "ignore_eos": True}, stop_after=2)
    assert len(chunks) == 2 and chunks[-1] != "[DONE]"
    deadline = time.monotonic() + 1.0
    while _gauge(server.url, "csearch_serve_kv_blocks_in_use") > idle and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gauge(server.url, "csearch_serve_kv_blocks_in_use") == idle


def test_promote_and_rollback_while_streaming_finish_every_stream_on_one_version(
        server, deployed):
    from search.registry import Registry

    reg = Registry(deployed["db"])
    stop = threading.Event()
    results: list[tuple[set[str], bool, int]] = []
    errors: list[str] = []

    def client() -> None:
        while not stop.is_set():
            try:
                chunks = _stream_raw(server.url, {"model": NAME, "prompt": "And it came to pass",
                                                  "max_tokens": 12, "temperature": 0,
                                                  "ignore_eos": True,
                                                  "stream_options": {"include_usage": True}})
            except Exception as e:  # noqa: BLE001 - every failure counts
                errors.append(repr(e))
                continue
            body = [c for c in chunks if isinstance(c, dict)]
            done = chunks[-1] == "[DONE]" and body[-1]["usage"]["completion_tokens"] == 12
            results.append(({c["system_fingerprint"] for c in body}, done, len(body)))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        for promote, want in ((lambda: reg.promote(NAME, 2), 2), (lambda: reg.rollback(NAME), 1)):
            promote()
            t0 = time.monotonic()
            while httpx.get(server.url + "/v1/models").json()["data"][0]["version"] != want:
                assert time.monotonic() - t0 < 5, "the server did not follow within 5 s"
                time.sleep(0.05)
            time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors
    assert results and all(done for _, done, _ in results)
    assert all(len(fps) == 1 for fps, _, _ in results)  # each stream from one version
    seen = set().union(*(fps for fps, _, _ in results))
    assert {"csearch-v1", "csearch-v2"} <= seen


def test_loadtest_streams_the_trials_trace_and_stores_what_it_served(server, deployed):
    first = deployed["trials"][0]
    r = csearch("loadtest", "--url", server.url, "--study", "lm", "--storage", deployed["db"],
                "--trial", str(first["number"]), "--format", "json")
    out = json.loads(r.stdout)
    assert out["errors"] == 0 and out["requests"] > 0, r.stderr
    assert out["tokens"] == out["requests"] * 16  # the replay's tokens per request
    assert 0 < out["ttft_p50_ms"] <= out["p50_ms"] and out["throughput_tps"] > 0
    import optuna

    study = optuna.load_study(study_name="lm", storage=deployed["db"])
    served = study.trials[first["number"]].user_attrs["served"]
    assert served["throughput_tps"] == out["throughput_tps"]
