"""The server framework's parts without a server: Versions (swap, pin, close once),
Batcher (batches, fairness, errors), the HTTP client's SSE splitter, the error schema."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import pytest
from pydantic import BaseModel

from search.httpclient import SSELines
from search.serving import Versions, error_body
from search.serving._batcher import Batcher


class Completion(BaseModel):  # module level: FastAPI resolves the annotation by name
    prompt: str
    max_tokens: int = 16


@dataclass
class _Handle:
    version: int
    closed: int = 0

    def close(self) -> None:
        self.closed += 1


@dataclass
class _Source:
    want: int = 1
    follows_alias: bool = True
    loads: list[int] = field(default_factory=list)

    def wanted(self) -> int:
        return self.want

    def load(self, version: int, device: str) -> int:
        self.loads.append(version)
        return version


def test_a_swap_closes_the_old_version_after_its_last_pin_and_only_once():
    src = _Source()
    v = Versions(src, lambda loaded: _Handle(loaded), poll_s=3600).start()
    one = v.current
    assert one.version == 1
    with v.pin() as a, v.pin() as b:
        assert a is b is one
        v.swap(_Handle(2))
        assert v.current.version == 2 and one.closed == 0  # still pinned twice
        with v.pin() as c:
            assert c.version == 2  # new requests get the new version
    assert one.closed == 1
    two = v.current
    v.swap(_Handle(3))  # unpinned: closed at once
    assert two.closed == 1
    v.stop()
    assert one.closed == two.closed == 1


def test_stop_leaves_a_pinned_version_open_until_its_pin_exits():
    v = Versions(_Source(follows_alias=False), lambda loaded: _Handle(loaded), 3600).start()
    with v.pin() as h:
        v.stop()
        assert h.closed == 0
    assert h.closed == 1


def test_the_alias_is_followed_and_a_failed_load_keeps_the_serving_version():
    src = _Source()
    made: list[_Handle] = []

    def make(version: int) -> _Handle:
        if version == 3:
            raise RuntimeError("artifact is corrupt")
        made.append(_Handle(version))
        return made[-1]

    swaps: list[tuple] = []
    v = Versions(src, make, poll_s=0.02, on_swap=lambda old, new: swaps.append(
        (old and old.version, new.version))).start()
    try:
        src.want = 3  # cannot load: v1 keeps serving
        time.sleep(0.2)
        assert v.current.version == 1
        src.want = 2
        deadline = time.monotonic() + 5
        while v.current.version != 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert v.current.version == 2 and made[0].closed == 1
        assert swaps == [(None, 1), (1, 2)]
    finally:
        v.stop()


def _run_batcher(sizes: list[int], max_batch: int, stagger_s: float = 0.0):
    seen: list[list[tuple[int, int]]] = []
    gate = threading.Event()

    def run(units):
        gate.wait()
        seen.append(list(units))
        return [u[1] * 10 for u in units]

    async def main():
        b = Batcher(run, max_batch)
        futures = []
        for r, n in enumerate(sizes):
            futures.append(b.submit([(r, i) for i in range(n)]))
            await asyncio.sleep(stagger_s)
        gate.set()
        out = await asyncio.gather(*futures)
        b.close()
        return out

    return asyncio.run(main()), seen


def test_batches_are_at_most_max_batch_and_every_request_gets_its_own_results_in_order():
    out, seen = _run_batcher([5, 1, 3], max_batch=4)
    assert out == [[0, 10, 20, 30, 40], [0], [0, 10, 20]]
    assert all(len(batch) <= 4 for batch in seen)
    assert sum(map(len, seen)) == 9


def test_a_small_request_joins_the_batch_after_the_running_one_of_a_large_request():
    _, seen = _run_batcher([20, 1], max_batch=4, stagger_s=0.05)
    assert [r for r, _ in seen[0]] == [0] * 4  # the large request's first chunk runs
    assert (1, 0) in seen[1]


def test_small_requests_cannot_starve_a_large_one():
    _, seen = _run_batcher([20, 4, 4, 4, 4, 4], max_batch=4, stagger_s=0.05)
    has_large = [any(r == 0 for r, _ in batch) for batch in seen]
    last = max(i for i, x in enumerate(has_large) if x)
    # Until the large request is done, it is in at least every other batch.
    assert all(has_large[i] or has_large[i + 1] for i in range(last))
    assert sum(n for n in map(len, seen)) == 40


def test_a_failed_batch_fails_its_requests_and_the_batcher_keeps_going():
    calls = []

    def run(units):
        calls.append(units)
        if any(u == "bad" for u in units):
            raise ValueError("boom")
        return units

    async def main():
        b = Batcher(run, 8)
        with pytest.raises(ValueError, match="boom"):
            await b.submit(["bad", "x"])
        assert await b.submit(["ok"]) == ["ok"]
        b.close()

    asyncio.run(main())


def test_sse_lines_are_split_across_chunk_boundaries():
    s = SSELines()
    got = s.feed(b'data: {"a"') + s.feed(b': 1}\n\ndata: [DO') + s.feed(b"NE]\n\n")
    assert got == ['{"a": 1}', "[DONE]"]


def test_the_error_schema_is_openais():
    assert error_body(413, "too big", param="max_items") == {
        "error": {"message": "too big", "type": "request_too_large", "param": "max_items",
                  "code": 413}}
    assert error_body(400, "x", code="context_length_exceeded")["error"]["code"] == \
        "context_length_exceeded"


def test_fastapi_validation_errors_and_unknown_routes_use_the_schema_as_400_and_404():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from search.serving._errors import install_error_handlers

    app = FastAPI()
    install_error_handlers(app)

    @app.post("/v1/completions")
    async def complete(body: Completion) -> dict:
        return {"text": body.prompt}

    c = TestClient(app)
    bad_type = c.post("/v1/completions", json={"prompt": "hi", "max_tokens": "many"})
    assert bad_type.status_code == 400
    err = bad_type.json()["error"]
    assert err["param"] == "max_tokens" and err["type"] == "invalid_request_error"
    bad_json = c.post("/v1/completions", content=b"{nope",
                      headers={"content-type": "application/json"})
    assert bad_json.status_code == 400 and "JSON" in bad_json.json()["error"]["message"]
    assert c.get("/nope").json()["error"]["code"] == 404
    assert c.post("/v1/completions", json={"prompt": "hi"}).json() == {"text": "hi"}


def test_streamed_text_decodes_incrementally_to_the_whole_decode():
    """A byte-level BPE splits multi-byte characters across tokens and merges spaces into
    words: the streamed text, token by token, must end as (and never run ahead of) the
    decode of the whole output, with unfinished characters held back."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from search.serving._lm import Codec

    text = ["naïve café déjà vu — über straße", "the cat sat on the mat; ½ ≥ ¼ ✓"] * 20
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(text, trainers.BpeTrainer(
        vocab_size=280, special_tokens=["<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    codec = Codec(fast, len(fast))
    ids = codec.encode(" ".join(text[:2]) + " ✓✓ ñ")
    assert len(ids) > 20
    dec, seen = codec.decoder(), []
    for i, t in enumerate(ids):
        out = dec.push([t])
        assert codec.decode(ids[:i + 1]).startswith(out.rstrip("\ufffd"))
        seen.append(out)
    assert seen[-1] == codec.decode(ids)
    assert any("\ufffd" in codec.decode(ids[:i]) for i in range(len(ids)))  # split chars
