"""A digits workload whose accuracy check takes a second (a plugin, `module:factory`).

The SIGTERM test needs a trial that is surely mid-evaluation when the signal lands; a
digits trial on a quiet core can be over in 0.1 s.
"""

from __future__ import annotations

import time
from dataclasses import replace

from objectives import Workload, load_workload

REF = "tests.integration.slow_workload:make_workload"


def make_workload() -> Workload:
    base = load_workload("digits-cnn")

    def evaluate(model):  # type: ignore[no-untyped-def]
        time.sleep(1.0)
        return base.evaluate(model)

    return replace(base, name="slow-digits", evaluate=evaluate)
