"""Ray as the launcher of workers: `csearch run --ray [ADDRESS] --workers N`.

Ray places the N workers (on an existing cluster, or on a local one it starts), gives
each its GPUs (`--gpus-per-worker`, through Ray's `CUDA_VISIBLE_DEVICES`) and restarts a
worker whose process died. Everything else stays csearch's and the database's: each Ray
task runs the same worker loop as `csearch worker` against the shared storage, so the
budget, the spool and the heartbeat (a killed worker's trial is failed and retried) work
as they do for workers started by hand. Ray is optional: `pip install csearch[ray]`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from .errors import UsageError

__all__ = ["RAY_EXTRA", "check_ray", "run_ray_workers"]

RAY_EXTRA = "pip install csearch[ray]"
# Environment a worker on another node needs from the driver's (heartbeats, spool, ...).
_PASSED_ENV = ("CSEARCH_", "HF_", "TRANSFORMERS_")
_TASK_RETRIES = 3  # Ray re-runs a worker whose process died this often
_STOP_WAIT_S = 60.0  # how long Ctrl-C waits for the cancelled tasks to fail their trials


def check_ray() -> Any:
    """The `ray` module, or a UsageError naming the extra."""
    try:
        import ray
    except ImportError:
        raise UsageError(f"csearch run --ray needs Ray: {RAY_EXTRA}") from None
    return ray


def _ray_worker(study_name: str, url: str, index: int, device: str | None,
                workload: str | None, threads: int) -> tuple[str, int]:
    """Body of one Ray task: the worker loop of `csearch worker`; returns (worker, trials)."""
    import ray
    import torch

    from .placement import place_on_gpu
    from .quiet import DEBUG_ENV, quiet_libraries
    from .runner import worker_id
    from .storage import close_storages
    from .workers import join_study

    quiet_libraries(debug=os.environ.get(DEBUG_ENV) == "1")
    gpus = [str(g) for g in ray.get_gpu_ids()]
    if gpus:  # Ray already set CUDA_VISIBLE_DEVICES; record it for the trials
        place_on_gpu(",".join(gpus))
    torch.set_num_threads(threads)
    try:
        return worker_id(), join_study(study_name, url, device=device, worker_index=index,
                                       workload=workload)
    finally:
        close_storages()


def run_ray_workers(study_name: str, url: str, n: int, *, address: str | None,
                    gpus_per_worker: float = 0, device: str | None = None,
                    workload: str | None = None) -> list[tuple[str, int]]:
    """Run `n` workers as Ray tasks until the study's budget; (worker, trials) of each.

    With no `address`, a local Ray instance is started for the run (one CPU per worker,
    however many cores: as `run --workers N` does) and shut down after."""
    ray = check_ray()
    env = {k: v for k, v in os.environ.items() if k.startswith(_PASSED_ENV)}
    init: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": False,
                            "include_dashboard": False, "configure_logging": True,
                            "logging_level": logging.WARNING}
    if address:
        init["address"] = address
    else:
        init["num_cpus"] = max(n, os.cpu_count() or 1)
    started = not ray.is_initialized()
    if started:
        ray.init(**init)
    try:
        cpus = ray.cluster_resources().get("CPU", 1)
        threads = max(1, int(cpus // n)) if not address else 1
        task = ray.remote(_ray_worker).options(
            num_cpus=1, num_gpus=gpus_per_worker, max_retries=_TASK_RETRIES)
        refs = [task.remote(study_name, url, i, device, workload, threads) for i in range(n)]
        try:
            return ray.get(refs)
        except KeyboardInterrupt:
            from .runner import Interrupted

            # Ctrl-C: each task stops as a local worker does on SIGINT (its running trial
            # failed as interrupted, re-run first on resume), then `csearch run` exits 130.
            for ref in refs:
                ray.cancel(ref)
            ray.wait(refs, num_returns=len(refs), timeout=_STOP_WAIT_S)
            raise Interrupted("SIGINT") from None
    finally:
        if started:
            ray.shutdown()
