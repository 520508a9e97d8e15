"""Issue 23 part 4-5: csearch's server before and after the lean rewrite, side by side.

    git archive 60e224d | tar -x -C /tmp/oldserve     # the LitServe server, unchanged
    flock /tmp/csearch-cpu.lock python benchmarks/lean_server.py --old /tmp/oldserve

Both servers serve the digits base model with the same serve config (batch <= 16, a
response cache of 0.2 x 1 MB, 1 thread), each started as `python -m search.serving` from
its own source tree, one after the other on the same 2 cores:

1. `wrk` (not csearch's own client) replays the digits Zipf trace (seed 0, one item per
   request, a Lua script cycling through the bodies) for `--seconds` at concurrency 16
   (`--rounds` times, the servers alternating), 64 and 1: requests/s, p50/p99, non-2xx,
   and the server's CPU per request: utime + stime from /proc/PID/stat of every process
   in the server's session (LitServe's worker processes included), after minus before,
   over the requests wrk counted.
2. `csearch loadtest`'s client (`search.loadtest.run_loadtest`) of each tree against the
   new server, 3,000 requests of the trace at concurrency 16, each in its own process:
   the client's CPU per request (its process time, imports excluded) and the server's.
3. Issue 26's guard, both servers: a 1-item request sent while a 4,000-item request
   (random items, so no cache hits) is being answered, both latencies; SIGTERM while three
   1,500-item requests are in flight: exit status, failed requests, traceback lines on
   stderr. The new server only (the old one took 84.6 s to accept it, issue 26): the
   time to refuse a 100,000-item request.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _common import machine  # noqa: E402
from search.serving import free_port  # noqa: E402

SERVE = {"batch_size": 16, "threads": 1, "cache_ratio": 0.2, "memory_ratio": 0.3,
         "memory_budget_mb": 1.0}
TICK = os.sysconf("SC_CLK_TCK")


def session_cpu_s(sid: int) -> float:
    """utime + stime of every live process in session `sid`, in seconds."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # field 6 of stat is the session id
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICK


def start(tree: Path, port: int) -> subprocess.Popen:
    source = json.dumps({"kind": "workload", "workload": "digits-cnn", "serve": SERVE})
    log = tempfile.TemporaryFile("w+")
    p = subprocess.Popen([sys.executable, "-m", "search.serving", "--source", source,
                          "--port", str(port)], cwd=tree, start_new_session=True,
                         env={**os.environ, "PYTHONPATH": str(tree)},
                         stdout=log, stderr=log, text=True)
    p.log = log  # type: ignore[attr-defined]
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if p.poll() is not None:
            log.seek(0)
            raise SystemExit(f"server from {tree} died: {log.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return p
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise SystemExit(f"server from {tree} not healthy in 180 s")


def stop(p: subprocess.Popen) -> None:
    from search.serving import Running

    Running("", p).stop()  # SIGINT, then the whole session is killed


def lua_script(bodies: list[str], trace: list[int], path: Path) -> None:
    lines = ["wrk.method = 'POST'", "wrk.headers['Content-Type'] = 'application/json'",
             "local bodies = {"]
    lines += [f"  [==[{b}]==]," for b in bodies]  # JSON holds "]]"
    lines += ["}", "local trace = {" + ",".join(str(i + 1) for i in trace) + "}",
              "local i = 0",
              "request = function()",
              "  i = i % #trace + 1",
              "  return wrk.format(nil, '/predict', nil, bodies[trace[i]])",
              "end"]
    path.write_text("\n".join(lines))


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    assert m, text
    return float(m[1]) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m[2]]


def run_wrk(port: int, script: Path, conns: int, seconds: float, sid: int) -> dict:
    cpu0 = session_cpu_s(sid)
    run = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency",
                          "-s", str(script), f"http://127.0.0.1:{port}"],
                         capture_output=True, text=True, check=True)
    if run.stderr.strip():  # a Lua error: wrk would send its default GET / instead
        raise SystemExit(f"wrk: {run.stderr.strip()[:500]}")
    out = run.stdout
    cpu = session_cpu_s(sid) - cpu0
    n = int(re.search(r"(\d+) requests in", out)[1])
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                     out)
    return {"requests": n, "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),
            "p50_ms": _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M)[1]),
            "p99_ms": _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M)[1]),
            "errors": (int(bad[1]) if bad else 0) + (sum(map(int, errs.groups())) if errs
                                                      else 0),
            "server_cpu_ms_per_req": cpu * 1e3 / max(n, 1)}


CLIENT = r"""
import json, sys, time
from objectives.serve import zipf_trace
from objectives.workloads import load_workload
from search.loadtest import LoadPlan, run_loadtest
w = load_workload("digits-cnn")
trace = zipf_trace(w.n_distinct_requests, int(sys.argv[2]), w.zipf_skew, 0)
bodies = tuple(json.dumps({"inputs": [w.request(i).tolist()]}).encode()
               for i in range(w.n_distinct_requests))
plan = LoadPlan(bodies, tuple(int(i) for i in trace), int(sys.argv[3]))
cpu0 = time.process_time()
r = run_loadtest(sys.argv[1], plan)
cpu = time.process_time() - cpu0
print(json.dumps({"errors": r.errors, "rps": r.throughput_rps, "p50_ms": r.p50_ms,
                  "p99_ms": r.p99_ms, "client_cpu_ms_per_req": cpu * 1e3 / len(trace)}))
"""


def run_client(tree: Path, url: str, requests: int, conc: int, sid: int) -> dict:
    cpu0 = session_cpu_s(sid)
    out = subprocess.run([sys.executable, "-c", CLIENT, url, str(requests), str(conc)],
                         cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                         capture_output=True, text=True, check=True).stdout
    res = json.loads(out.strip().splitlines()[-1])
    res["server_cpu_ms_per_req"] = (session_cpu_s(sid) - cpu0) * 1e3 / requests
    return res


def _items(n: int, seed: int) -> list:
    import numpy as np

    return np.random.default_rng(seed).standard_normal((n, 1, 8, 8)).round(4).tolist()


def guard(tree: Path, new: bool) -> dict:
    import threading

    out: dict = {}
    port = free_port()
    url = f"http://127.0.0.1:{port}/predict"
    p = start(tree, port)
    try:
        if new:
            body = json.dumps({"inputs": _items(1, 0) * 100_000}).encode()
            t0 = time.perf_counter()
            r = httpx.post(url, content=body, timeout=300)
            out["100k_items"] = {"status": r.status_code, "s": time.perf_counter() - t0,
                                 "MB": len(body) / 1e6}
        large: dict = {}

        def send_large() -> None:
            t = time.perf_counter()
            r = httpx.post(url, json={"inputs": _items(4000, 1)}, timeout=300)
            large.update(status=r.status_code, s=time.perf_counter() - t)

        th = threading.Thread(target=send_large)
        th.start()
        time.sleep(0.3)  # the large request is being answered
        t0 = time.perf_counter()
        r = httpx.post(url, json={"inputs": _items(1, 2)}, timeout=300)
        out["small_during_large"] = {"status": r.status_code, "s": time.perf_counter() - t0}
        th.join()
        out["large"] = large
        codes: list = []

        def send(seed: int) -> None:
            try:
                codes.append(httpx.post(url, json={"inputs": _items(1500, seed)},
                                        timeout=300).status_code)
            except httpx.HTTPError as e:
                codes.append(type(e).__name__)

        ths = [threading.Thread(target=send, args=(s,)) for s in range(3, 6)]
        for t in ths:
            t.start()
        deadline = time.monotonic() + (30 if new else 1.0)
        while time.monotonic() < deadline:  # the new server: until its gauge says 3
            if new and "csearch_serve_requests_in_flight 3.0" in httpx.get(
                    f"http://127.0.0.1:{port}/metrics").text:
                break
            time.sleep(0.01)
        p.send_signal(signal.SIGTERM)
        for t in ths:
            t.join()
        rc = p.wait(60)
        p.log.seek(0)  # type: ignore[attr-defined]
        err = p.log.read()  # type: ignore[attr-defined]
        out["sigterm"] = {"exit": rc, "answers": codes,
                          "traceback_lines": sum("Traceback" in ln for ln in err.splitlines()),
                          "stderr_lines": len(err.strip().splitlines())}
    finally:
        stop(p)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", type=Path, required=True, help="source tree of the old server")
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--client-requests", type=int, default=3000)
    ap.add_argument("--parts", default="wrk,client,guard")
    a = ap.parse_args()
    parts = set(a.parts.split(","))

    from objectives.serve import zipf_trace
    from objectives.workloads import load_workload
    w = load_workload("digits-cnn")
    bodies = [json.dumps({"inputs": [w.request(i).tolist()]})
              for i in range(w.n_distinct_requests)]
    trace = [int(i) for i in zipf_trace(len(bodies), 20_000, w.zipf_skew, 0)]
    tmp = Path(tempfile.mkdtemp())
    script = tmp / "trace.lua"
    lua_script(bodies, trace, script)
    trees = {"old (LitServe, 60e224d)": a.old.resolve(), "new (FastAPI + uvicorn)": ROOT}
    print(f"machine: {machine()}; load {os.getloadavg()[0]:.2f}; wrk -t1, {a.seconds:g} s "
          "runs, digits Zipf trace, serve config", SERVE)
    rows: list[tuple[str, str, dict]] = []

    def measure(name: str, tree: Path, what: list[tuple[str, int]]) -> None:
        port = free_port()
        p = start(tree, port)
        try:
            run_wrk(port, script, 16, 2, p.pid)  # warm-up
            for label, conns in what:
                r = run_wrk(port, script, conns, a.seconds, p.pid)
                rows.append((name, label, r))
                print(json.dumps({"server": name, "run": label, **r}), flush=True)
        finally:
            stop(p)

    for rnd in range(a.rounds if "wrk" in parts else 0):
        for name, tree in trees.items():
            measure(name, tree, [(f"c16 round {rnd + 1}", 16)])
    for name, tree in trees.items() if "wrk" in parts else ():
        measure(name, tree, [("c64", 64), ("c1", 1)])

    port = free_port()
    p = start(ROOT, port)
    try:
        for name, tree in trees.items() if "client" in parts else ():
            r = run_client(tree, f"http://127.0.0.1:{port}", a.client_requests, 16, p.pid)
            rows.append((f"new server, {name.split(' ')[0]} csearch loadtest client",
                         "client c16", r))
            print(json.dumps({"client": name, **r}), flush=True)
    finally:
        stop(p)

    for name, tree in trees.items() if "guard" in parts else ():
        print(json.dumps({"guard": name, **guard(tree, new=tree == ROOT)}), flush=True)

    print("\n| server | run | requests/s | p50 / p99 ms | errors | server CPU ms/request |")
    print("|---|---|---|---|---|---|")
    for name, label, r in rows:
        if "client_cpu_ms_per_req" in r:
            continue
        print(f"| {name} | {label} | {r['rps']:.0f} | {r['p50_ms']:.2f} / {r['p99_ms']:.1f} "
              f"| {r['errors']} | {r['server_cpu_ms_per_req']:.3f} |")
    print("\n| load generator | requests/s | p50 / p99 ms | errors | client CPU ms/request "
          "| server CPU ms/request |")
    print("|---|---|---|---|---|---|")
    for name, _, r in rows:
        if "client_cpu_ms_per_req" in r:
            print(f"| {name} | {r['rps']:.0f} | {r['p50_ms']:.2f} / {r['p99_ms']:.1f} | "
                  f"{r['errors']} | {r['client_cpu_ms_per_req']:.3f} | "
                  f"{r['server_cpu_ms_per_req']:.3f} |")


if __name__ == "__main__":
    main()
