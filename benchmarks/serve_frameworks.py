"""Issue 14 part 3: which serving framework, measured on this machine, in one run.

LitServe and Ray Serve are not csearch dependencies any more: `pip install -e .[bench]`.

    flock /tmp/csearch-cpu.lock python benchmarks/serve_frameworks.py [--requests 1500]

For LitServe (stock, and with `fast_queue`, its ZeroMQ transport) and Ray Serve, each in
its own subprocess, one after the other:
1. per-request overhead: sequential round trips (one client, keep-alive) of one digits
   request item to an identity model (answers its input), median and p99 after warm-up;
2. throughput: `--requests` requests at `--concurrency` from asyncio clients to the digits
   CNN with the framework's own dynamic batching (max 16, 2 ms wait), requests/s and
   errors.
3. csearch's own server (`search.serving`; since issue 23 one FastAPI/uvicorn process,
   no longer LitServe: see benchmarks/lean_server.py) serving the digits base model: its
   overhead (all cache hits, what `serve_overhead_ms` stores) and a load test of the
   workload's Zipf trace (`--requests` at `--concurrency`): mean, p50, p99, throughput,
   hit rate, errors.
4. `swap`: csearch's server following `production` while clients keep sending: promote
   v2, then roll back to v1; failed requests and seconds until `/version` changes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import machine  # noqa: E402

BATCH, WAIT_S = 16, 0.002


# --- the servers (run in a subprocess: `--serve FRAMEWORK --model M --port P`) ----------

def _digits_model():
    from objectives.workloads import load_workload

    return load_workload("digits-cnn").model.eval()


def _forward(model, items):
    import torch

    with torch.inference_mode():
        return model(torch.tensor(items, dtype=torch.float32)).tolist()


import litserve as ls  # noqa: E402


class LitIdentity(ls.LitAPI):
    def setup(self, device):
        pass

    def decode_request(self, request):
        return request["inputs"]

    def predict(self, x):
        return x

    def encode_response(self, output):
        return {"outputs": output}


class LitDigits(ls.LitAPI):
    def setup(self, device):
        import torch

        torch.set_num_threads(1)
        self.model = _digits_model()

    def decode_request(self, request):
        return request["inputs"][0]

    def batch(self, xs):
        return xs

    def predict(self, xs):
        return _forward(self.model, xs)

    def unbatch(self, ys):
        return ys

    def encode_response(self, output):
        return {"outputs": [output]}


def serve_litserve(model_name: str, port: int, fast_queue: bool = False) -> None:
    api = LitIdentity() if model_name == "identity" else LitDigits(max_batch_size=BATCH,
                                                                   batch_timeout=WAIT_S)
    ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1,
                 fast_queue=fast_queue).run(
        host="127.0.0.1", port=port, num_api_servers=1, generate_client_file=False,
        log_level="warning")


def serve_ray(model_name: str, port: int) -> None:
    import ray
    from ray import serve

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})

    @serve.deployment(ray_actor_options={"num_cpus": 1})
    class Identity:
        async def __call__(self, request):
            return {"outputs": (await request.json())["inputs"]}

    @serve.deployment(ray_actor_options={"num_cpus": 1})
    class Digits:
        def __init__(self):
            import torch

            torch.set_num_threads(1)
            self.model = _digits_model()

        @serve.batch(max_batch_size=BATCH, batch_wait_timeout_s=WAIT_S)
        async def run(self, items):
            return _forward(self.model, items)

        async def __call__(self, request):
            return {"outputs": [await self.run((await request.json())["inputs"][0])]}

    app = (Identity if model_name == "identity" else Digits).bind()
    serve.run(app, route_prefix="/predict")
    while True:
        time.sleep(3600)


# --- the client ------------------------------------------------------------------------

def _start(framework: str, model_name: str, port: int) -> subprocess.Popen:
    log = tempfile.TemporaryFile("w+")
    p = subprocess.Popen([sys.executable, __file__, "--serve", framework, "--model", model_name,
                          "--port", str(port)], start_new_session=True,
                         stdout=log, stderr=log, text=True)
    p.log = log  # type: ignore[attr-defined]
    return p


def _wait(url: str, body: dict, proc: subprocess.Popen, limit: float = 300) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit:
        if proc.poll() is not None:
            proc.log.seek(0)  # type: ignore[attr-defined]
            raise SystemExit(f"server died: {proc.log.read()[-2000:]}")  # type: ignore
        try:
            if httpx.post(url, json=body, timeout=5).status_code == 200:
                return time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise SystemExit(f"{url} not ready in {limit} s")


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def sequential(url: str, body: dict, n: int, warm: int = 50) -> dict:
    with httpx.Client() as c:
        times = []
        for i in range(warm + n):
            t0 = time.perf_counter()
            r = c.post(url, json=body)
            dt = time.perf_counter() - t0
            r.raise_for_status()
            if i >= warm:
                times.append(dt * 1e3)
    return {"median_ms": statistics.median(times), "p99_ms": float(np.percentile(times, 99))}


async def _load(url: str, bodies: list[dict], concurrency: int) -> dict:
    lat: list[float] = []
    hits: list[bool] = []
    errors = 0
    queue = iter(bodies)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as c:
        async def client() -> None:
            nonlocal errors
            for body in queue:
                t0 = time.perf_counter()
                try:
                    r = await c.post(url, json=body)
                    ok = r.status_code == 200
                    if ok:
                        hits.extend(r.json().get("cached", []))
                except httpx.HTTPError:
                    ok = False
                lat.append((time.perf_counter() - t0) * 1e3)
                errors += not ok

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    out = {"requests": len(bodies), "errors": errors, "throughput_rps": len(bodies) / wall,
           "mean_ms": statistics.fmean(lat), "p50_ms": float(np.percentile(lat, 50)),
           "p99_ms": float(np.percentile(lat, 99))}
    if hits:
        out["hit_rate"] = sum(hits) / len(hits)
    return out


def load(url: str, bodies: list[dict], concurrency: int) -> dict:
    return asyncio.run(_load(url, bodies, concurrency))


def swap_under_load(pool: list, trace: np.ndarray, concurrency: int, requests: int) -> dict:
    """Promote v2, then roll back to v1, while `concurrency` clients keep sending: failed
    requests and seconds until `/version` shows each change. The registry is the tests'
    file-backed stand-in (`tests/integration/serving_fake.py`, same methods as
    `search.registry.Registry`), so this part runs before the real registry is merged."""
    import threading

    repo = Path(__file__).resolve().parent.parent
    fake_dir = str(repo / "tests" / "integration")
    sys.path.insert(0, fake_dir)
    from serving_fake import add_version, perturbed, promote

    from objectives.workloads import load_workload
    from search.serving import RegistrySource, start_server

    base = load_workload("digits-cnn").model.eval()
    root = Path(tempfile.mkdtemp())
    add_version(root, "digits", 1, base)
    add_version(root, "digits", 2, perturbed(base, 1))
    promote(root, "digits", 1)
    env = {"PYTHONPATH": os.pathsep.join([fake_dir, str(repo), os.environ.get("PYTHONPATH", "")])}
    src = RegistrySource(str(root), "digits", registry="serving_fake:FakeRegistry")
    done = threading.Event()
    counts = {"sent": 0, "errors": 0, "versions": set()}

    async def run_clients(url: str) -> None:
        async with httpx.AsyncClient(timeout=60) as c:
            async def client(k: int) -> None:
                i = k
                while not done.is_set() or counts["sent"] < requests:
                    i = (i + 1) % len(trace)
                    try:
                        r = await c.post(url, json={"inputs": [pool[int(trace[i])]]})
                        if r.status_code == 200:
                            counts["versions"].add(r.json()["version"])
                        else:
                            counts["errors"] += 1
                    except httpx.HTTPError:
                        counts["errors"] += 1
                    counts["sent"] += 1
            await asyncio.gather(*(client(k) for k in range(concurrency)))

    def switch(url: str, version: int) -> float:
        promote(root, "digits", version)
        t0 = time.perf_counter()
        while httpx.get(url + "/version").json()["version"] != version:
            time.sleep(0.05)
        return time.perf_counter() - t0

    with start_server(src, env=env) as srv:
        t = threading.Thread(target=lambda: asyncio.run(run_clients(srv.url + "/predict")))
        t.start()
        time.sleep(1.0)
        promote_s = switch(srv.url, 2)
        time.sleep(1.0)
        rollback_s = switch(srv.url, 1)
        time.sleep(1.0)
        done.set()
        t.join()
    return {"requests": counts["sent"], "errors": counts["errors"], "promote_s": promote_s,
            "rollback_s": rollback_s, "versions_answered": sorted(counts["versions"])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--serve")
    ap.add_argument("--model", default="identity")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--requests", type=int, default=1500)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--sequential", type=int, default=300)
    ap.add_argument("--frameworks", default="litserve,litserve-zmq,ray,csearch,swap")
    a = ap.parse_args()
    if a.serve:
        if a.serve == "ray":
            serve_ray(a.model, a.port)
        else:
            serve_litserve(a.model, a.port, fast_queue=a.serve == "litserve-zmq")
        return

    from objectives.serve import zipf_trace
    from objectives.workloads import load_workload
    from search.serving import WorkloadSource, free_port, start_server

    w = load_workload("digits-cnn")
    pool = [w.request(i).tolist() for i in range(w.n_distinct_requests)]
    one = {"inputs": [pool[0]]}
    trace = zipf_trace(len(pool), a.requests, w.zipf_skew, seed=0)
    bodies = [{"inputs": [pool[int(i)]]} for i in trace]
    print(f"machine: {machine()}; {a.requests} requests at concurrency {a.concurrency}, "
          f"{a.sequential} sequential")
    results: dict[str, dict] = {}
    for fw in a.frameworks.split(","):
        if fw == "swap":
            print(json.dumps({"swap": swap_under_load(pool, trace, a.concurrency,
                                                      a.requests)}))
            continue
        if fw == "csearch":
            serve_cfg = {"batch_size": BATCH, "threads": 1, "cache_ratio": 0.2,
                         "memory_ratio": 0.3, "memory_budget_mb": 1.0}
            t0 = time.perf_counter()
            with start_server(WorkloadSource("digits-cnn", serve_cfg)) as srv:
                start_s = time.perf_counter() - t0
                url = srv.url + "/predict"
                over = sequential(url, one, a.sequential)  # all hits after the first
                res = load(url, bodies, a.concurrency)
            results[fw] = {"start_s": start_s, "overhead": over, "load": res}
            print(json.dumps({fw: results[fw]}))
            continue
        row: dict = {}
        for model_name in ("identity", "digits"):
            port = free_port()
            proc = _start(fw, model_name, port)
            try:
                url = f"http://127.0.0.1:{port}/predict"
                row[f"{model_name}_start_s"] = _wait(url, one, proc)
                if model_name == "identity":
                    row["overhead"] = sequential(url, one, a.sequential)
                else:
                    row["load"] = load(url, bodies, a.concurrency)
            finally:
                _stop(proc)
        results[fw] = row
        print(json.dumps({fw: row}))
    print("\nframework  overhead ms (median / p99)  throughput rps  p50 / p99 ms  errors")
    for fw, r in results.items():
        o, ld = r["overhead"], r["load"]
        print(f"{fw:9}  {o['median_ms']:6.2f} / {o['p99_ms']:6.2f}"
              f"           {ld['throughput_rps']:7.0f}       {ld['p50_ms']:6.1f} / "
              f"{ld['p99_ms']:6.1f}  {ld['errors']}"
              + (f"  hit rate {ld['hit_rate']:.2f}" if "hit_rate" in ld else ""))


if __name__ == "__main__":
    main()
