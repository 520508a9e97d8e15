"""A local spool of evaluated results, so that no trial's work is lost to a database outage.

Before a trial's results touch the database, they are written to a small JSON file. The
file is removed once Optuna has stored the trial as COMPLETE. If the database was
unreachable, `flush` writes the spooled results when it is back: into the same trial if
it is still RUNNING, else (it was failed as stale meanwhile) as a new COMPLETE trial with
the same parameters.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from dataclasses import replace
from pathlib import Path

import optuna
from optuna.distributions import distribution_to_json, json_to_distribution
from optuna.trial import TrialState

from ._optuna import storage_of, trial_id_of
from .attrs import RECOVERED_FROM, TrialResult, store_results

__all__ = ["Spool"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Spool:
    def __init__(self, study_name: str, url: str, root: Path | None = None):
        from objectives import cache_dir

        key = hashlib.sha1(f"{url}\0{study_name}".encode()).hexdigest()[:16]
        env = os.environ.get("CSEARCH_SPOOL_DIR")
        self.dir = (root or (Path(env) if env else cache_dir() / "spool")) / key
        self.host = socket.gethostname()

    def _path(self, trial_id: int) -> Path:
        return self.dir / f"{self.host}-{os.getpid()}-{trial_id}.json"

    def add(self, trial: optuna.trial.Trial, result: TrialResult) -> None:
        record = {
            "trial_id": trial_id_of(trial),
            "number": trial.number,
            "params": trial.params,
            "distributions": {k: distribution_to_json(d) for k, d in trial.distributions.items()},
            **result.to_record(),
        }
        tmp = self._path(trial_id_of(trial)).with_suffix(".tmp")
        for attempt in range(3):  # another worker may remove the empty folder meanwhile
            self.dir.mkdir(parents=True, exist_ok=True)
            try:
                tmp.write_text(json.dumps(record))
                os.replace(tmp, self._path(trial_id_of(trial)))
                return
            except FileNotFoundError:
                if attempt == 2:
                    raise

    def done(self, trial_id: int) -> None:
        self._path(trial_id).unlink(missing_ok=True)
        self._drop_if_empty()

    def _drop_if_empty(self) -> None:
        """A study's spool folder goes with its last result: no empty folders pile up."""
        try:
            self.dir.rmdir()
        except OSError:  # not empty (another worker's result), or already gone
            pass

    def pending(self) -> list[Path]:
        """Spooled results of this process, and of dead processes on this host."""
        if not self.dir.is_dir():
            return []
        out = []
        for p in sorted(self.dir.glob(f"{self.host}-*.json")):
            pid = int(p.name[len(self.host) + 1 :].split("-", 1)[0])
            if pid == os.getpid() or not _alive(pid):
                out.append(p)
        return out

    def flush(self, study: optuna.Study) -> int:
        """Write spooled results into the study; return how many were written."""
        written = 0
        storage = storage_of(study)
        for path in self.pending():
            rec = json.loads(path.read_text())
            trial = storage.get_trial(rec["trial_id"])
            if trial.state == TrialState.COMPLETE:
                path.unlink(missing_ok=True)
                continue
            result = TrialResult.from_record(rec)
            if trial.state == TrialState.RUNNING:
                store_results(storage, trial, result)
                study.tell(trial.number, result.values, skip_if_finished=True)
            else:  # failed as stale while the database was away: keep the result anyway
                recovered = replace(result, extra={**result.extra, RECOVERED_FROM: rec["number"]})
                study.add_trial(optuna.trial.create_trial(
                    state=TrialState.COMPLETE,
                    params=rec["params"],
                    distributions={k: json_to_distribution(d)
                                   for k, d in rec["distributions"].items()},
                    values=result.values,
                    user_attrs=recovered.user_attrs(),
                    system_attrs=recovered.system_attrs(),
                ))
            path.unlink(missing_ok=True)
            written += 1
        self._drop_if_empty()
        return written
