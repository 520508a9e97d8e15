"""Issue 23 acceptance for language models, in one run on this machine:

1. a `tiny-lm` study (`--space lm`, 12 trials); two of its trials with different
   `quant.kv_bits` or weights deployed as v1 and v2 of model `lm23`, v1 promoted;
2. `csearch serve` of `lm23`: the official `openai` package gets a completion and a
   stream; at temperature 0 every stored replay sample of v1's trial is served as the
   replay generated it;
3. `csearch loadtest --trial` at the trial's trace and concurrency on a fresh server:
   its very first requests (`first_requests`), and, on another fresh server, after a
   warm-up pass whose prompts share no block with the trace's (the process warm, its
   prefix cache holding nothing the trace asks for, as the trial's replay starts):
   errors, served tokens/s against the trial's `throughput_tps`, served p50 TTFT
   against its `ttft_ms`, the client's CPU per request. Then the same on the server of
   step 2, whose cache holds the requests it answered, beside the replay started from
   that same cache (`after_samples`): closed-loop clients' TTFT depends on what the
   cache holds when the load starts;
4. promote v2 then roll back, each during a streaming load test: failed or short
   streams, seconds until `/v1/models` shows the new version;
5. the same model (v1's export) behind a plain per-request `generate` server
   (`plain_generate_server.py`, no continuous batching) at concurrency 16: tokens/s of
   both servers on the same trace.

    python benchmarks/lm_serving.py --dir /tmp/lm23 [--trials 12]

Prints a JSON summary (also written to DIR/summary.json).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import csearch, env  # noqa: E402

NAME = "lm23"  # the study; the model is named per run (MODEL)
MODEL = f"lm23-{int(time.time())}"


def _pick(study: optuna.Study) -> tuple[optuna.trial.FrozenTrial, optuna.trial.FrozenTrial]:
    """Two Pareto trials (feasible first) whose KV format or weight format differ; v1 is
    one whose model Hugging Face `generate` can run (no structured pruning)."""
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    front = {t.number for t in study.best_trials}

    def fmt(t: optuna.trial.FrozenTrial) -> tuple[Any, ...]:
        p = t.params
        return (p.get("quant.kv_bits"), p.get("quant.method"),
                tuple(sorted((k, v) for k, v in p.items() if k.startswith("quant.method["))))

    ranked = sorted(done, key=lambda t: (t.number not in front, t.number))
    first = next(t for t in ranked if t.params.get("prune.method") != "structured")
    second = next((t for t in ranked if t is not first and fmt(t) != fmt(first)), ranked[1])
    return first, second


def _stream_load(url: str, study: str, db: str, trial: int, requests: int,
                 out: dict[str, Any]) -> None:
    r = csearch("loadtest", "--url", url, "--study", study, "--storage", db, "--requests",
                str(requests), "--format", "json", check=False)
    out["result"] = json.loads(r.stdout) if r.returncode == 0 else {"stderr": r.stderr}


def _follow(url: str, want: int) -> float:
    t0 = time.monotonic()
    while httpx.get(url + "/v1/models").json()["data"][0]["version"] != want:
        if time.monotonic() - t0 > 30:
            return float("inf")
        time.sleep(0.05)
    return time.monotonic() - t0


def _served_vs_replay(db: str, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                      version: int) -> dict[str, Any]:
    """Version `version` (trial `trial`) on a server of its own: the loadtest at the trial's
    trace and concurrency (after one warm-up pass) beside its replay, stored and now."""
    from search.loadtest import plan_for, run_loadtest
    from search.serving import RegistrySource, start_server

    plan = plan_for(study, trial.number)
    now = _replay_now(db, trial, version)
    with start_server(RegistrySource(db, MODEL, version)) as srv:
        run_loadtest(srv.url, plan)
        r = run_loadtest(srv.url, plan)
    stored = trial.user_attrs["metrics"]
    return {"threads": trial.params.get("serve.threads"), "errors": r.errors,
            "served_tps": r.lm["throughput_tps"], "served_ttft_p50_ms": r.lm["ttft_p50_ms"],
            "trial_tps": stored["throughput_tps"], "trial_ttft_ms": stored["ttft_ms"],
            "replay_now": now}


def _replay_now(db: str, trial: optuna.trial.FrozenTrial, version: int = 1,
                warm_with: list[dict[str, Any]] | None = None) -> dict[str, float]:
    """The trial's generation replay again, now, on its deployed model: the stored figures
    were measured while the study ran, under whatever else the machine was doing.

    `warm_with`: requests (stored replay samples) run through the replay's engine one at
    a time before the trace, as a server that answered them first holds them in its
    prefix cache: the replay then starts from the state that server is in."""
    import torch

    import objectives.lm.replay as replay
    from objectives.lm.engine import GenRequest, SamplingParams
    from search.export import rebuild_config
    from search.registry import Registry

    reg = Registry(db)
    model, w = reg.load_model(MODEL, version)
    config = rebuild_config(reg.meta(MODEL, version), w)
    budget = int(float(reg.get(MODEL, version).serve["memory_budget_mb"]) * 1e6)
    seed = int(trial.user_attrs.get("eval_seed", trial.number))
    build = replay.build_engine

    def prewarmed(*args: Any, **kwargs: Any) -> Any:
        engine = build(*args, **kwargs)
        for smp in warm_with or []:
            engine.add(GenRequest(list(smp["prompt_ids"]),
                                  SamplingParams(max_tokens=len(smp["tokens"]))))
            while not engine.idle:
                engine.step()
        engine.prefix_hits = engine.max_running = 0
        return engine

    replay.build_engine = prewarmed
    try:
        r = w.serve(model, config, budget_bytes=budget,
                    weight_bytes=len(reg.artifact(MODEL, version)),
                    device=torch.device("cpu"), seed=seed)
    finally:
        replay.build_engine = build
    return {k: r.metrics[k] for k in ("throughput_tps", "ttft_ms", "tpot_ms",
                                      "prefix_hit_rate")}


def _loadtest_cli(url: str, db: str, trial: int) -> dict[str, Any]:
    """`csearch loadtest --trial` as a user runs it: the trial's trace and concurrency."""
    r = csearch("loadtest", "--url", url, "--study", NAME, "--storage", db,
                "--trial", str(trial), "--format", "json")
    return json.loads(r.stdout)


def _rotated(plan: Any) -> Any:
    """The plan with every prompt rotated by one token: the same shapes and lengths, but
    no prompt block the trace's prompts could find in a prefix cache."""
    from dataclasses import replace

    return replace(plan, prompts=tuple(tuple(p[1:]) + tuple(p[:1]) for p in plan.prompts))


def _ratios(served: dict[str, Any], replay: dict[str, float]) -> dict[str, float]:
    return {"tps_replay_over_served": round(replay["throughput_tps"]
                                            / served["throughput_tps"], 3),
            "ttft_served_over_replay": round(served["ttft_p50_ms"] / replay["ttft_ms"], 3)}


def main() -> None:
    import openai
    from transformers.utils import logging as hf_logging

    from search.loadtest import plan_for, run_loadtest
    from search.registry import Registry
    from search.serving import RegistrySource, free_port, start_server

    hf_logging.set_verbosity_error()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--reuse", action="store_true",
                    help="use the study already in DIR (its trials as they are)")
    a = ap.parse_args()
    d = Path(a.dir)
    d.mkdir(parents=True, exist_ok=True)
    db = f"sqlite:///{d / 'lm.db'}"
    summary: dict[str, Any] = {}

    t0 = time.perf_counter()
    if not a.reuse:
        csearch("run", "--workload", "tiny-lm", "--space", "lm", "--trials", str(a.trials),
                "--study", NAME, "--storage", db, "--seed", "0")
        summary["study_s"] = round(time.perf_counter() - t0, 1)
    study = optuna.load_study(study_name=NAME, storage=db)
    first, second = _pick(study)
    for t in (first, second):
        csearch("deploy", "--study", NAME, "--storage", db, "--trial", str(t.number),
                "--name", MODEL, "--force")
    csearch("promote", MODEL, "1", "--storage", db)
    summary["v1"] = {"trial": first.number, "params": first.params,
                     "throughput_tps": first.user_attrs["metrics"]["throughput_tps"],
                     "ttft_ms": first.user_attrs["metrics"]["ttft_ms"],
                     "concurrency": plan_for(study, first.number).concurrency}
    summary["v2"] = {"trial": second.number, "params": second.params}

    # v1 at the trial's trace and concurrency on a fresh server: first its very first
    # requests; then, on another fresh server, after a warm-up pass of the same requests
    # with their prompts rotated by one token (the process warm, its prefix cache holding
    # nothing the trace asks for), as the trial's replay starts.
    trial_fig = {"throughput_tps": summary["v1"]["throughput_tps"],
                 "ttft_ms": summary["v1"]["ttft_ms"]}
    with start_server(RegistrySource(db, MODEL, 1)) as srv:
        cold = _loadtest_cli(srv.url, db, first.number)
    summary["first_requests"] = {"served": cold, **_ratios(cold, trial_fig)}
    with start_server(RegistrySource(db, MODEL, 1)) as srv:
        run_loadtest(srv.url, _rotated(plan_for(study, first.number)))
        served = _loadtest_cli(srv.url, db, first.number)
    summary["loadtest"] = served
    ratios = _ratios(served, trial_fig)
    summary["tps_ratio_replay_over_served"] = ratios["tps_replay_over_served"]
    summary["ttft_ratio_served_over_replay"] = ratios["ttft_served_over_replay"]
    summary["replay_now"] = _replay_now(db, first)

    with start_server(RegistrySource(db, MODEL), poll_s=0.5) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0)
        c = client.completions.create(model=MODEL, prompt="And God said", max_tokens=16,
                                      temperature=0)
        s = list(client.completions.create(model=MODEL, prompt="And God said", max_tokens=16,
                                           temperature=0, stream=True))
        summary["openai"] = {"completion": c.choices[0].text,
                             "stream": "".join(x.choices[0].text for x in s if x.choices),
                             "stream_chunks": len(s)}
        from objectives import load_workload

        tok = load_workload("tiny-lm").extras["tokenizer"]
        same = 0
        samples = first.user_attrs.get("replay_samples", [])
        for smp in samples:
            r = httpx.post(srv.url + "/v1/completions", timeout=60, json={
                "model": MODEL, "prompt": smp["prompt_ids"], "max_tokens": len(smp["tokens"]),
                "temperature": 0, "ignore_eos": True}).json()
            same += r["choices"][0]["text"] == tok.decode(smp["tokens"])
        summary["temperature0_equal"] = f"{same}/{len(samples)}"

        # The same load on this server, whose prefix cache now holds the samples' prompts
        # (and the openai requests'), beside the replay started from that state.
        after = _loadtest_cli(srv.url, db, first.number)
        warm_replay = _replay_now(db, first, warm_with=[
            {"prompt_ids": tok.encode("And God said"), "tokens": [0] * 16}, *samples])
        summary["after_samples"] = {"served": after, "replay_from_same_cache": warm_replay,
                                    **_ratios(after, warm_replay),
                                    "ttft_served_over_trial": round(
                                        after["ttft_p50_ms"] / trial_fig["ttft_ms"], 3)}

        summary["v2_served_vs_replay"] = _served_vs_replay(db, study, second, 2)
        swaps = []
        for action, want in (("promote", 2), ("rollback", 1)):
            box: dict[str, Any] = {}
            th = threading.Thread(target=_stream_load,
                                  args=(srv.url, NAME, db, first.number, 400, box))
            th.start()
            time.sleep(2.0)
            if action == "promote":
                Registry(db).promote(MODEL, 2)
            else:
                Registry(db).rollback(MODEL)
            seen_s = _follow(srv.url, want)
            th.join()
            res = box["result"]
            swaps.append({"action": action, "visible_s": round(seen_s, 2),
                          "errors": res.get("errors"), "requests": res.get("requests"),
                          "versions": res.get("versions")})
        summary["swaps"] = swaps

    # The same trace at concurrency 16 against csearch serve and the plain server.
    export = d / "export"
    csearch("export", "--study", NAME, "--storage", db, "--trial", str(first.number),
            "-o", str(export))
    plan = plan_for(study, first.number, concurrency=16, requests=192)
    warm = plan_for(study, first.number, concurrency=16)
    with start_server(RegistrySource(db, MODEL, 1)) as srv:
        run_loadtest(srv.url, warm)
        ours = run_loadtest(srv.url, plan)
    port = free_port()
    threads = int(first.params.get("serve.threads", 1))
    plain = subprocess.Popen([sys.executable, str(Path(__file__).parent /
                                                  "plain_generate_server.py"),
                              "--export", str(export), "--port", str(port), "--threads",
                              str(threads)], env=env())
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(url + "/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        run_loadtest(url, warm)
        base = run_loadtest(url, plan)
    finally:
        plain.terminate()
        plain.wait(30)
    summary["c16"] = {
        "csearch_tps": ours.lm["throughput_tps"], "csearch_errors": ours.errors,
        "plain_tps": base.lm["throughput_tps"], "plain_errors": base.errors,
        "ratio": round(ours.lm["throughput_tps"] / base.lm["throughput_tps"], 2),
        "client_cpu_ms_per_request": round(ours.client_cpu_ms or 0, 3),
    }
    (d / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
