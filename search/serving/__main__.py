"""`python -m search.serving --source JSON --port P`: the subprocess `start_server` runs."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ._limits import Limits
from .server import serve, source_from_json


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m search.serving")
    ap.add_argument("--source", required=True, help="JSON of a RegistrySource/WorkloadSource")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--poll-s", type=float, default=1.0)
    ap.add_argument("--limits", default="{}", help="JSON of Limits fields")
    a = ap.parse_args()
    try:
        serve(source_from_json(a.source), a.host, a.port, poll_s=a.poll_s,
              limits=Limits(**json.loads(a.limits)))
    except KeyboardInterrupt:
        pass
    except Exception as e:  # one line for start_server's error message
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    # The server has stopped gracefully (requests answered, versions closed). End the
    # process now: interpreter teardown while torch's worker threads still exist can
    # abort (SIGABRT) instead of exiting 0.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
