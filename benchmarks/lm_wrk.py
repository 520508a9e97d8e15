"""Server CPU per streamed completion under `wrk` (a load generator that is not csearch's
own), the current server against another checkout's, in alternating rounds.

    python benchmarks/lm_wrk.py --storage sqlite:///DIR/lm.db --model NAME \
        --old /path/to/other/checkout [--rounds 3]

`--model` is a deployed LM (e.g. one of `lm_serving.py`'s); version 1 is served. Needs
`wrk` (Debian: `apt-get install wrk`). Prints one line per server and round, then means.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile

from search.serving import RegistrySource, start_server


def _cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--storage", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--old", required=True, help="another checkout's root (its PYTHONPATH)")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    body = json.dumps({"model": a.model, "prompt": "And God said unto Moses", "max_tokens": 16,
                       "temperature": 0, "stream": True, "ignore_eos": True})
    lua = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    lua.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
              f"wrk.body = {json.dumps(body)}\n")
    lua.close()
    results: dict[str, list[tuple[float, float]]] = {}
    for _ in range(a.rounds):
        for name, env in (("current", {}), ("old", {"PYTHONPATH": a.old})):
            with start_server(RegistrySource(a.storage, a.model, 1), env=env) as srv:
                wrk = ["wrk", "-t1", "-c16", "-s", lua.name, srv.url + "/v1/completions"]
                subprocess.run([*wrk, "-d3s"], capture_output=True, check=True)  # warm-up
                c0 = _cpu_s(srv.process.pid)
                out = subprocess.run([*wrk, "-d10s"], capture_output=True, text=True,
                                     check=True).stdout
                c1 = _cpu_s(srv.process.pid)
            n = int(re.search(r"(\d+) requests in", out).group(1))
            bad = "Non-2xx" in out
            results.setdefault(name, []).append(((c1 - c0) / n * 1e3, n / 10))
            print(f"{name}: server CPU {(c1 - c0) / n * 1e3:.2f} ms/request, "
                  f"{n / 10:.0f} requests/s{' (non-2xx answers!)' if bad else ''}", flush=True)
    os.unlink(lua.name)
    for name, rows in results.items():
        print(f"{name}: mean {sum(c for c, _ in rows) / len(rows):.2f} ms/request, "
              f"{sum(r for _, r in rows) / len(rows):.0f} requests/s")


if __name__ == "__main__":
    main()
