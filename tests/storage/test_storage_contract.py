"""What a user relies on from a study's storage, checked against every backend.

One parametrised fixture, `backend`: in-memory, SQLite file, journal file, PostgreSQL
(`CSEARCH_TEST_POSTGRES_URL`) and MySQL/MariaDB (`CSEARCH_TEST_MYSQL_URL`). Each backend
runs one 3-trial digits study (cached for the module, since trials cost real training);
the tests then inspect it, resume it and reopen it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import uuid
from dataclasses import dataclass

import optuna
import pytest
from optuna.trial import TrialState

from objectives import METRICS
from search.errors import SpecError
from search.results import pareto_rows, trial_rows
from search.runner import MEMORY_CONSTRAINT, count_finished, run_trials
from search.spec import BASELINE_ATTR, DEFAULT_OBJECTIVES, ENV_ATTR, SPEC_ATTR, StudySpec
from search.storage import open_storage
from search.study import build_spec, create_or_resume, load_context

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from benchmarks.report_large import fill_study  # noqa: E402  (a csearch-like study, fast)

BACKENDS = ["inmemory", "sqlite", "journal", "postgresql", "mysql"]
TRIALS = 3
# The sampler seed only decides which configs run; with this one the 3 trials (and the
# resumed 4th) need few fine-tune epochs, which keeps five backends affordable on a CPU.
SEED = 2


@dataclass
class Backend:
    kind: str
    url: str | None  # None for in-memory
    storage: optuna.storages.BaseStorage
    study_name: str | None = None  # the module's finished study on this backend

    def reopen(self) -> optuna.storages.BaseStorage:
        """A fresh storage object on the same database (in-memory: the same object)."""
        if self.url is None:
            return self.storage
        return open_storage(self.url, create=False, heartbeat=False)


_BACKENDS: dict[str, Backend] = {}
_CREATED: list[tuple[Backend, str]] = []


def _spec(**changes) -> StudySpec:
    spec = build_spec(
        workload="digits-cnn", space="compression", objectives=DEFAULT_OBJECTIVES,
        constraints=(), sampler="tpe", seed=SEED, device="cpu", trials=TRIALS, timeout=None,
        memory_budget_mb=None, artifacts=None,
    )
    return dataclasses.replace(spec, **changes)


@pytest.fixture(scope="module")
def ctx():
    return load_context(_spec())


@pytest.fixture(scope="module", autouse=True)
def _delete_created_studies():
    yield
    for backend, name in _CREATED:
        if backend.kind in ("postgresql", "mysql"):
            try:
                optuna.delete_study(study_name=name, storage=backend.storage)
            except Exception:  # already gone
                pass
    for backend in _BACKENDS.values():
        engine = getattr(backend.storage, "engine", None)
        if engine is not None:
            engine.dispose()


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path_factory) -> Backend:
    kind = request.param
    if kind == "postgresql":
        url = request.getfixturevalue("postgres_url")
    elif kind == "mysql":
        url = request.getfixturevalue("mysql_url")
    if kind in _BACKENDS:
        return _BACKENDS[kind]
    if kind == "inmemory":
        b = Backend(kind, None, optuna.storages.InMemoryStorage())
    else:
        if kind in ("sqlite", "journal"):
            path = tmp_path_factory.mktemp(kind) / ("studies.db" if kind == "sqlite"
                                                    else "journal.log")
            url = f"{kind}:///{path}"
        b = Backend(kind, url, open_storage(url, create=True))
    _BACKENDS[kind] = b
    return b


def _new_name(backend: Backend) -> str:
    name = f"contract-{uuid.uuid4().hex[:10]}"
    _CREATED.append((backend, name))
    return name


@pytest.fixture
def finished(backend: Backend, ctx) -> tuple[Backend, optuna.Study]:
    """The backend's 3-trial study, run once per backend."""
    if backend.study_name is None:
        name = _new_name(backend)
        study, created = create_or_resume(backend.storage, name, ctx.spec, ctx)
        assert created
        ran = run_trials(study, ctx)
        assert ran == TRIALS
        backend.study_name = name
    return backend, optuna.load_study(study_name=backend.study_name, storage=backend.storage)


def test_budget_is_exact_and_resume_adds_none(finished, ctx):
    backend, study = finished
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert len(states) == TRIALS
    assert all(s == TrialState.COMPLETE for s in states), states
    # The same spec again: resumed, nothing to do.
    again, created = create_or_resume(backend.storage, study.study_name, ctx.spec, ctx)
    assert not created
    assert run_trials(again, ctx) == 0
    assert len(again.get_trials(deepcopy=False)) == TRIALS


def test_a_larger_budget_resumes_up_to_it(finished, ctx):
    backend, study = finished
    target = len(study.trials) + 1
    spec = dataclasses.replace(ctx.spec, trials=target)
    more = dataclasses.replace(ctx, spec=spec)
    resumed, created = create_or_resume(backend.storage, study.study_name, spec, None)
    assert not created
    assert run_trials(resumed, more) == 1
    assert count_finished(resumed) == target
    # The stored budget follows the latest run, so a plain rerun does nothing.
    stored = StudySpec.from_dict(resumed.user_attrs[SPEC_ATTR])
    assert stored.trials == target
    assert run_trials(resumed, more) == 0


def test_trial_and_pareto_rows_carry_the_contract_keys(finished):
    _, study = finished
    rows = trial_rows(study)
    assert [r["number"] for r in rows] == sorted(t.number for t in study.trials)
    for r in rows:
        assert {"number", "state", "params", "metrics", "values", "feasible"} <= set(r)
        assert r["state"] == "COMPLETE"
        assert "prune.method" in r["params"] and "quant.method" in r["params"]
        assert set(METRICS) <= set(r["metrics"])
        assert r["values"] == [r["metrics"]["accuracy"], r["metrics"]["latency_mean_ms"],
                               r["metrics"]["size_mb"]]
        assert r["feasible"] in (True, False)
    front = pareto_rows(study)
    assert front, "a study with feasible trials has a non-empty front"
    by_number = {r["number"]: r for r in rows}
    for p in front:
        assert {"number", "params", "metrics", "values", "feasible"} <= set(p)
        assert p["feasible"] is True
        assert p["values"] == by_number[p["number"]]["values"]
        # No feasible trial dominates a front member (max accuracy, min latency, min size).
        for r in rows:
            if r["feasible"] and r["number"] != p["number"]:
                a, b = r["values"], p["values"]
                dominates = (a[0] >= b[0] and a[1] <= b[1] and a[2] <= b[2]
                             and (a[0] > b[0] or a[1] < b[1] or a[2] < b[2]))
                assert not dominates, (r["number"], p["number"])


def test_metric_names_spec_and_baseline_are_stored(finished, ctx):
    backend, study = finished
    reopened = optuna.load_study(study_name=study.study_name, storage=backend.reopen())
    assert reopened.metric_names == ["accuracy", "latency_mean_ms", "size_mb"]
    assert [d.name for d in reopened.directions] == ["MAXIMIZE", "MINIMIZE", "MINIMIZE"]
    attrs = reopened.user_attrs
    stored = StudySpec.from_dict(attrs[SPEC_ATTR])
    assert stored.differences(ctx.spec) == []
    assert stored.space_toml == ctx.spec.space_toml and stored.workload == "digits-cnn"
    baseline = attrs[BASELINE_ATTR]
    assert set(METRICS) <= set(baseline)
    assert baseline["sparsity"] == 0 and baseline["memory_budget_mb"] == ctx.budget_mb
    assert attrs[ENV_ATTR]["torch"] and attrs[ENV_ATTR]["device"] == "cpu"
    for t in reopened.get_trials(deepcopy=False):
        assert set(METRICS) <= set(t.user_attrs["metrics"])
        assert MEMORY_CONSTRAINT in t.constraints
        assert (t.constraints[MEMORY_CONSTRAINT] <= 0) == (
            t.user_attrs["metrics"]["memory_mb"] <= ctx.budget_mb + 1e-9)
        # The stored params rebuild the trial's config (export relies on it).
        config = ctx.space.sample(optuna.trial.FixedTrial(t.params))
        assert config.prune.method == t.params["prune.method"]


@pytest.mark.parametrize(
    "change, field",
    [({"objectives": ("accuracy:max", "size_mb:min")}, "objectives"),
     ({"seed": 1}, "seed"),
     ({"constraints": ("accuracy_drop<=0.01",)}, "constraints"),
     ({"memory_budget_mb": 0.5}, "memory_budget_mb"),
     ({"space": "serving"}, "space")],
    ids=["objectives", "seed", "constraints", "budget", "space"],
)
def test_resume_with_a_different_spec_is_refused_naming_the_field(finished, ctx, change, field):
    backend, study = finished
    if "space" in change:
        change = {**change, "space_toml": build_spec(
            workload="digits-cnn", space="serving", objectives=DEFAULT_OBJECTIVES,
            constraints=(), sampler="tpe", seed=SEED, device="cpu", trials=TRIALS,
            timeout=None, memory_budget_mb=None, artifacts=None).space_toml}
    before = dict(study.user_attrs[SPEC_ATTR])
    n_before = len(study.trials)
    with pytest.raises(SpecError) as info:
        create_or_resume(backend.storage, study.study_name, _spec(**change), ctx)
    assert field in str(info.value)
    assert study.study_name in str(info.value)
    after = optuna.load_study(study_name=study.study_name, storage=backend.storage)
    assert after.user_attrs[SPEC_ATTR] == before
    assert len(after.trials) == n_before


def test_resume_may_change_budget_device_and_timeout(finished, ctx):
    backend, study = finished
    spec = dataclasses.replace(ctx.spec, timeout=600.0, trials=len(study.trials))
    resumed, created = create_or_resume(backend.storage, study.study_name, spec, None)
    assert not created
    assert StudySpec.from_dict(resumed.user_attrs[SPEC_ATTR]).timeout == 600.0


def test_a_missing_study_is_not_created_without_a_context(backend):
    from search.errors import StudyNotFound

    name = f"missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(StudyNotFound, match=name):
        create_or_resume(backend.storage, name, _spec(), None)
    assert name not in {s.study_name for s in backend.storage.get_all_studies()}


# --- fast reads (search.storage.snapshot) against Optuna's own reads -----------------------------

def _reference_pareto(study: optuna.Study) -> list[dict]:
    """The front as csearch computed it before the snapshot reads: Optuna's `best_trials` (feasible
    trials only), or the first best feasible trial of a single-objective study."""
    from search.results import is_feasible, trial_row

    if len(study.directions) == 1:
        feasible = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                    if is_feasible(t) is not False]
        sign = 1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1
        trials = [max(feasible, key=lambda t: sign * t.value)] if feasible else []
    else:
        trials = sorted(study.best_trials, key=lambda t: t.number)
    keys = ("number", "params", "metrics", "values", "feasible")
    return [{k: trial_row(t)[k] for k in keys} for t in trials]


def _edge_trials(n_obj: int) -> list:
    """Trials a fast path could get wrong: no constraints at all, legacy list only, a
    dominating but infeasible trial, exact duplicates on the front, an infinite value,
    intermediate values (NaN, inf), a RUNNING trial, and params in a fixed order."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    from optuna.trial import create_trial

    dists = {"z.last": CategoricalDistribution(["a", "b", None]),
             "a.first": FloatDistribution(1e-4, 1.0, log=True),
             "m.int": IntDistribution(1, 9, step=2)}

    def trial(values, system=None, state=TrialState.COMPLETE, inter=None, z="a"):
        params = {"z.last": z, "a.first": 0.01, "m.int": 3}
        return create_trial(state=state, params=params, distributions=dists,
                            values=None if values is None else values[:n_obj],
                            user_attrs={"metrics": {"accuracy": 0.5, "nan": float("nan")},
                                        "worker": "h:1"},
                            system_attrs=system or {}, intermediate_values=inter or {})

    big = 10.0
    return [
        trial([0.995, 0.4, 0.1]),  # no constraints: feasible
        trial([0.999, 0.3, 0.05], {"constraints": [0.5]}),  # legacy only, infeasible
        trial([0.999, 0.3, 0.05], {"constraints": [-0.5], "constraints:x": 0.0}, z=None),
        trial([0.999, 0.3, 0.05], {"constraints": [-0.5], "constraints:x": 0.0}, z="b"),
        trial([big, float("inf"), 0.2], {"constraints:x": -1.0}),
        trial([2 * big, 0.1, 0.1], {"constraints:x": 1e-9, "constraints:y": -1.0}),
        trial(None, {"constraints:x": -1.0}, TrialState.PRUNED,
              {0: 0.5, 1: float("nan"), 2: float("inf"), 3: float("-inf")}),
        trial(None, None, TrialState.RUNNING),
    ]


def _canon(trials: list) -> str:
    """Every field of the trials, NaN-safe (a NaN read twice is two unequal floats);
    params in their stored order, attrs and intermediate values by key."""
    assert all(set(vars(t)) == set(vars(trials[0])) for t in trials)
    return repr([(t._trial_id, t.number, t.state, t.values, t.datetime_start,
                  t.datetime_complete, list(t.params.items()), list(t.distributions.items()),
                  sorted(t.user_attrs.items()), sorted(t.system_attrs.items()),
                  sorted(t.intermediate_values.items())) for t in trials])


@pytest.mark.parametrize("n_obj", [3, 1], ids=["multi", "single"])
def test_fast_reads_and_front_equal_optunas_reads(backend, n_obj):
    """`read_trials`, `read_objectives` and `pareto_rows` give what Optuna's own reads
    and `best_trials` give, on every backend, for a csearch-like study plus edge cases."""
    from search.storage import rdb_storage, read_objectives, read_trials
    from search.results import pareto_rows, trial_row, trial_rows

    name = _new_name(backend)
    study = fill_study(backend.storage, name, 30, seed=3, n_pruned=3, n_failed=2)
    if n_obj == 1:  # the same trials, as a single-objective study
        single = _new_name(backend)
        one = optuna.create_study(storage=backend.storage, study_name=single)
        one.add_trials([optuna.trial.create_trial(
            state=t.state, params=t.params, distributions=t.distributions,
            values=None if t.values is None else t.values[:1], user_attrs=t.user_attrs,
            system_attrs=t.system_attrs) for t in study.get_trials(deepcopy=False)])
        study = one
    study.add_trials(_edge_trials(n_obj))
    fresh = optuna.load_study(study_name=study.study_name, storage=backend.reopen())
    # SQL databases take the fast path; the other storages fall back to Optuna's reads.
    assert (rdb_storage(fresh) is not None) == (backend.kind in ("sqlite", "postgresql",
                                                                 "mysql"))

    slow = fresh.get_trials(deepcopy=False)
    fast = read_trials(fresh)
    assert _canon(fast) == _canon(slow)
    if backend.kind == "sqlite":  # attrs in the order Optuna's own SQLite read gives
        assert [(list(t.user_attrs), list(t.system_attrs)) for t in fast] == [
            (list(t.user_attrs), list(t.system_attrs)) for t in slow]
    some = {t._trial_id for t in slow[::3]}
    assert _canon(read_trials(fresh, trial_ids=some)) == _canon(
        [t for t in slow if t._trial_id in some])
    states = (TrialState.PRUNED, TrialState.RUNNING)
    assert _canon(read_trials(fresh, states=states)) == _canon(
        fresh.get_trials(deepcopy=False, states=states))
    rows = read_objectives(fresh)
    complete = [t for t in slow if t.state == TrialState.COMPLETE]
    assert rows.numbers == [t.number for t in complete]
    assert rows.values == [t.values for t in complete]
    assert rows.constraints == [t.constraints for t in complete]

    reference = _reference_pareto(fresh)
    assert reference and len(reference) < len(complete)
    # Key order inside attrs is the database's (PostgreSQL's is arbitrary, also for Optuna's
    # own read), so the rows are compared as JSON with sorted keys; SQLite's order is
    # checked above.
    def same(a: object, b: object) -> bool:
        return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)

    assert same(pareto_rows(fresh), reference)
    assert same(pareto_rows(fresh, slow), reference)
    assert all(r["feasible"] is True for r in reference)
    assert same(trial_rows(fresh), [trial_row(t) for t in slow])


# --- batched bookkeeping ---------------------------------------------------------------

@pytest.fixture(scope="module")
def evaluation(ctx):
    """One real evaluation (the uncompressed model, no fine-tuning), reused by every trial
    of the bookkeeping test: that test is about what is stored, not what is measured."""
    from objectives import evaluate
    from search.study import baseline_config

    return evaluate(ctx.workload, baseline_config(), budget_mb=ctx.budget_mb, seed=SEED)


def _plain_objective(ctx, evaluation):
    """What csearch's objective stored before it batched its writes: one Optuna call per
    parameter, user attr and constraint, the legacy constraints list, the artifact."""
    import warnings

    from optuna.artifacts import FileSystemArtifactStore, upload_artifact

    from search.runner import LEGACY_CONSTRAINTS_ATTR, worker_id

    def objective(trial: optuna.Trial) -> tuple[float, ...]:
        ctx.space.sample(trial)
        trial.set_user_attr("eval_seed", ctx.spec.seed + trial.number)
        trial.set_user_attr("worker", worker_id())
        trial.set_user_attr("device", str(ctx.device))  # no "gpu": not placed on one
        m = evaluation.metrics
        constraints = {str(c): c.value(m) for c in ctx.spec.parsed_constraints()}
        constraints[MEMORY_CONSTRAINT] = evaluation.memory_margin_mb
        trial.set_user_attr("metrics", m)
        for name, value in constraints.items():
            trial.set_constraint(name, value)
        trial.storage.set_trial_system_attr(trial._trial_id, LEGACY_CONSTRAINTS_ATTR,
                                            list(constraints.values()))
        folder = os.path.join(ctx.spec.artifacts, "plain-upload")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"trial-{trial.number}-model.safetensors")
        with open(path, "wb") as f:
            f.write(evaluation.artifact)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            artifact_id = upload_artifact(
                artifact_store=FileSystemArtifactStore(ctx.spec.artifacts), file_path=path,
                study_or_trial=trial, mimetype="application/octet-stream")
        trial.set_user_attr("artifact_id", artifact_id)
        return tuple(float(m[k]) for k in ctx.spec.metric_names)

    return objective


def _stored(study: optuna.Study) -> list[tuple]:
    """Everything stored per trial, with the random artifact ids taken out."""
    out = []
    for t in study.get_trials():
        user = {k: v for k, v in t.user_attrs.items() if k != "artifact_id"}
        system = {k: v for k, v in t.system_attrs.items() if not k.startswith("artifacts:")}
        for k, v in t.system_attrs.items():
            if k.startswith("artifacts:"):  # the artifact's meta, less its random id
                system["artifacts:*"] = {m: x for m, x in json.loads(v).items()
                                         if m != "artifact_id"}
        out.append((t.number, t.state, t.params, t.distributions, t.values, t.constraints,
                    user, system, "artifact_id" in t.user_attrs))
    return out


def test_batched_trial_writes_store_what_one_call_per_value_stores(
        backend, ctx, evaluation, monkeypatch, tmp_path):
    """csearch writes a trial's parameters and attrs in a few batches (one commit each on
    SQL storages, and the sampler reads the trials once per sampling pass); the stored
    trials must equal those of the same search written with one Optuna call per value.
    12 trials: past TPE's 10 random start-up trials, so grouped sampling is exercised."""
    import sqlalchemy

    from search import runner
    from search.runner import TrialObjective
    from search.samplers import make_sampler

    trials = 12
    spec = dataclasses.replace(ctx.spec, artifacts=str(tmp_path),
                               constraints=("accuracy_drop<=0.02",))
    tctx = dataclasses.replace(ctx, spec=spec)
    monkeypatch.setattr(runner, "evaluate", lambda *a, **k: evaluation)
    commits: dict[str, int] = {}
    stored = {}
    for side, objective in (("csearch", TrialObjective(tctx)),
                            ("plain", _plain_objective(tctx, evaluation))):
        study = optuna.create_study(storage=backend.storage, study_name=_new_name(backend),
                                    directions=spec.directions,
                                    sampler=make_sampler("tpe", 0, tctx.space))
        engine = getattr(getattr(study._storage, "_backend", None), "engine", None)
        count = {"n": 0}

        def on_commit(_conn, count=count) -> None:
            count["n"] += 1

        if engine is not None:
            sqlalchemy.event.listen(engine, "commit", on_commit)
        try:
            study.optimize(objective, n_trials=trials)
        finally:
            if engine is not None:
                sqlalchemy.event.remove(engine, "commit", on_commit)
        commits[side] = count["n"]
        stored[side] = _stored(study)
    assert [s[1] for s in stored["csearch"]] == [TrialState.COMPLETE] * trials
    assert stored["csearch"] == stored["plain"]
    if backend.kind in ("sqlite", "postgresql", "mysql"):
        assert commits["csearch"] * 2 < commits["plain"], commits


def test_a_sampling_pass_reads_its_own_pending_writes(backend):
    """Inside a sampling pass, a read of the trial sees the parameters suggested so far."""
    from search.storage import sampling_pass

    study = optuna.create_study(storage=backend.storage, study_name=_new_name(backend))
    trial = study.ask()
    with sampling_pass(trial.storage, trial._trial_id):
        x = trial.suggest_float("x", 0.0, 1.0)
        trial.set_user_attr("note", "kept")
        seen = trial.storage.get_trial(trial._trial_id)
        assert seen.params == {"x": x} and seen.user_attrs == {"note": "kept"}
        y = trial.suggest_int("y", 1, 3)
    study.tell(trial, x + y)
    (t,) = optuna.load_study(study_name=study.study_name, storage=backend.reopen()).trials
    assert t.params == {"x": x, "y": y} and t.user_attrs == {"note": "kept"}


@pytest.mark.parametrize("same_process", [True, False])
def test_a_sampling_pass_refuses_a_distribution_the_study_cannot_hold(backend, same_process):
    """A parameter suggested with a distribution incompatible with the one the study
    stored fails the trial, as Optuna's one write per suggest does: checked against what
    this process wrote before, or (another worker) against the database."""
    from search.storage import sampling_pass

    study = optuna.create_study(storage=backend.storage, study_name=_new_name(backend))
    first = study.ask()
    with sampling_pass(first.storage, first._trial_id):
        first.suggest_categorical("c", ["a", "b"])
    study.tell(first, 0.0)
    if not same_process:
        study = optuna.load_study(study_name=study.study_name, storage=backend.reopen())
    second = study.ask()
    with pytest.raises(ValueError, match="dynamic value space"):
        with sampling_pass(second.storage, second._trial_id):
            second.suggest_categorical("c", ["a", "b", "z"])
    assert study.get_trials()[1].params == {}
