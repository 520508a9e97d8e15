"""The `refine` sampler: neighbours of feasible front members, conditionals kept
consistent, pinned groups kept pinned, and no parameter set proposed twice, including by
two workers at once on PostgreSQL."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
import warnings

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from search.refine import (
    PLAN_ATTR,
    RefineSampler,
    feasible_front,
    mutate,
    param_key,
    pattern_move,
)
from search.refine.front import History
from search.attrs import TrialResult, store_results
from search.samplers import make_sampler
from spaces import Space, load_space

from test_samplers import DIRECTIONS, GROUPS, finish

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


@pytest.fixture(scope="module")
def joint() -> Space:
    return load_space("joint").expand(GROUPS, {"prune.amount": GROUPS,
                                               "prune.threshold": GROUPS})


def _active(space: Space, params: dict) -> set[str]:
    """The names `Space.sample` would suggest for these values."""
    seen: dict = {}
    for p in space.params:
        if p.active(seen) and p.name in params:
            seen[p.name] = params[p.name]
    return set(seen)


def _random_trials(space: Space, n: int, seed: int = 0) -> optuna.Study:
    study = optuna.create_study(directions=DIRECTIONS,
                                sampler=optuna.samplers.RandomSampler(seed=seed))
    rng = random.Random(seed)
    for _ in range(n):
        t = study.ask()
        space.sample(t)
        finish(study, t, rng)
    return study


def test_mutation_steps_a_few_params_and_keeps_conditionals_consistent(joint):
    study = _random_trials(joint, 30)
    rng = np.random.RandomState(0)
    parents = [t for t in study.trials if t.state == TrialState.COMPLETE]
    switched = 0
    for i in range(300):
        parent = parents[i % len(parents)]
        child = mutate(joint, parent, rng)
        assert child != parent.params
        # exactly the active parameters, each within its range
        assert set(child) == _active(joint, child)
        for p in joint.params:
            if p.name in child:
                v = child[p.name]
                assert v in p.choices if p.type == "categorical" else p.low <= v <= p.high
        kept = set(child) & set(parent.params)
        changed = [k for k in kept if child[k] != parent.params[k]]
        assert len(changed) <= 3
        switched += set(child) != set(parent.params)
    assert switched > 0  # some steps changed a choice that switches parameters on or off


def test_integer_and_float_steps_are_local(joint):
    rng = np.random.RandomState(1)
    parent = {"prune.method": "global", "prune.amount": 0.9, "quant.method": "lowbit",
              "quant.bits": 4, "quant.group_size": 0, "train.lr": 1e-3, "train.epochs": 2}
    small = load_space("compression")
    for _ in range(200):
        child = mutate(small, parent, rng)
        if child.get("quant.method") == "lowbit" and child["quant.bits"] != 4:
            assert abs(child["quant.bits"] - 4) == 1  # one bit more or fewer
        if child.get("train.epochs") is not None:
            assert abs(child["train.epochs"] - 2) <= 1


def test_pinned_group_stays_pinned(joint):
    """A group the sensitivity pass pinned to fp32 has a one-choice distribution in the
    parent's trial; the child keeps it."""
    parent = {p.name: p.choices[0] if p.type == "categorical" else p.low
              for p in joint.params}
    parent = {k: v for k, v in parent.items() if k in _active(joint, parent)}
    parent["quant.method[conv1]"] = "none"
    dists = {"quant.method[conv1]": CategoricalDistribution(["none"])}
    rng = np.random.RandomState(2)
    for _ in range(200):
        assert mutate(joint, parent, rng, dists)["quant.method[conv1]"] == "none"


def test_parents_are_front_members_or_near_misses_given_more_recovery(joint):
    study = _random_trials(joint, 25)
    front = feasible_front(study.trials, study.directions)
    assert front and all(all(v <= 0 for v in t.constraints.values()) for t in front)
    infeasible_better = [t for t in study.trials if t.state == TrialState.COMPLETE
                         and any(v > 0 for v in t.constraints.values())]
    assert infeasible_better  # the fixture has infeasible trials to avoid
    study.sampler = RefineSampler(optuna.samplers.RandomSampler(seed=3), joint, share=1.0,
                                  seed=3)
    numbers = {t.number for t in front}
    near = {t.number for t in History.near_misses_of(study)}
    assert near and not near & numbers
    repairs = 0
    for _ in range(20):
        t = study.ask()
        joint.sample(t)
        plan = study.trials[t.number].system_attrs[PLAN_ATTR]
        assert t.params == plan["params"]  # the trial took the planned child
        if plan["parent"] not in numbers:  # a near miss given more recovery, nothing else
            assert plan["parent"] in near
            miss = study.trials[plan["parent"]].params
            changed = {k for k in set(miss) | set(t.params) if miss.get(k) != t.params.get(k)}
            assert changed and all(k.startswith("train.") for k in changed)
            repairs += 1
        study.tell(t, state=TrialState.FAIL)
    assert 0 < repairs < 20


def test_no_front_no_plan_and_enqueued_trials_untouched(joint):
    sampler = RefineSampler(optuna.samplers.RandomSampler(seed=4), joint, share=1.0, seed=4)
    study = optuna.create_study(directions=DIRECTIONS, sampler=sampler)
    study.enqueue_trial({"prune.method": "none"})
    t = study.ask()
    joint.sample(t)
    assert t.params["prune.method"] == "none"
    assert PLAN_ATTR not in study.trials[t.number].system_attrs


def _duplicates(study: optuna.Study) -> int:
    keys = [param_key(t.params) for t in study.get_trials(deepcopy=False)]
    return len(keys) - len(set(keys))


def test_default_refine_sampler_proposes_no_repeats(joint):
    study = _random_trials(joint, 12)
    study.sampler = make_sampler("refine", 5, joint)
    rng = random.Random(5)
    for _ in range(40):
        t = study.ask()
        joint.sample(t)
        finish(study, t, rng)
    planned = [t for t in study.trials if t.system_attrs.get(PLAN_ATTR)]
    assert 8 <= len(planned) <= 32  # about half refine, the rest is TPE's
    assert _duplicates(study) == 0


def _two_workers(storage_a, storage_b, joint: Space, name: str) -> optuna.Study:
    """Two workers with the SAME sampler seed (the worst case: the same random draws) ask
    trials that stay RUNNING; the second must not take the first one's child."""
    base = optuna.create_study(study_name=name, directions=DIRECTIONS, storage=storage_a,
                               sampler=optuna.samplers.RandomSampler(seed=6))
    rng = random.Random(6)
    for _ in range(8):
        t = base.ask()
        joint.sample(t)
        finish(base, t, rng)
    studies = [optuna.load_study(study_name=name, storage=s,
                                 sampler=RefineSampler(optuna.samplers.RandomSampler(seed=7),
                                                       joint, share=1.0, seed=7))
               for s in (storage_a, storage_b)]

    def work(study: optuna.Study) -> None:
        for _ in range(6):
            joint.sample(study.ask())  # left RUNNING

    with ThreadPoolExecutor(len(studies)) as pool:
        list(pool.map(work, studies, timeout=60))  # a worker's error is raised here
    return base


def test_two_workers_never_share_a_parameter_set_in_memory(joint):
    storage = optuna.storages.InMemoryStorage()
    study = _two_workers(storage, storage, joint, "mem")
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    assert len(running) == 12
    assert len({param_key(t.params) for t in running}) == 12


@pytest.mark.postgres
def test_two_workers_never_share_a_parameter_set_on_postgres(joint, postgres_url,
                                                             study_name):
    url = postgres_url.replace("postgresql://", "postgresql+psycopg://")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, b = optuna.storages.RDBStorage(url), optuna.storages.RDBStorage(url)
    try:
        study = _two_workers(a, b, joint, study_name)
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        assert len(running) == 12
        assert len({param_key(t.params) for t in running}) == 12
        plans = [t.system_attrs.get(PLAN_ATTR) for t in running]
        assert all(plans)  # every one of them was a refinement
    finally:
        optuna.delete_study(study_name=study_name, storage=url)


def _done(number: int, values: list[float], plan: bool, seeded: bool = False):
    t = optuna.trial.create_trial(
        values=values, params={}, distributions={},
        system_attrs={PLAN_ATTR: {"parent": 0, "params": {}}} if plan else {},
        user_attrs={"seeded": True} if seeded else {})
    t.number = number
    return t


@pytest.mark.parametrize("refine_wins, expected", [(True, 0.75), (False, 0.25)])
def test_adaptive_share_follows_which_kind_reaches_the_front(joint, refine_wins, expected):
    """Six refinements and six base trials after a seed; the kind whose trials make up the
    front gets the larger share, within the bounds; a fixed sampler keeps its share."""
    trials = [_done(0, [0.5, 1.0, 1.0], plan=False, seeded=True)]
    for i in range(12):
        on_front = (i < 6) == refine_wins
        x = i / 12
        # front members trade accuracy for latency; the rest are dominated
        values = [0.9 + 0.05 * x, 0.1 + x, 0.1] if on_front else [0.1, 5.0, 5.0]
        trials.append(_done(i + 1, values, plan=i < 6))
    dirs = [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE,
            optuna.study.StudyDirection.MINIMIZE]
    history = History()
    history.update("study", dirs, trials)
    front = history.front
    assert [t.number for t in front] == [t.number for t in feasible_front(trials, dirs)]
    assert len(front) == 6
    assert history.counts.tolist() == [8.0, 8.0]  # six of each, counted from two; no seed
    adaptive = RefineSampler(optuna.samplers.RandomSampler(), joint, adaptive=True)
    assert adaptive._share_now(history.counts, front) == expected
    fixed = RefineSampler(optuna.samplers.RandomSampler(), joint, share=0.5)
    assert fixed._share_now(history.counts, front) == 0.5


def test_history_folds_trials_in_once_and_matches_a_full_recount(joint):
    """The incremental front and parameter sets equal those computed from all trials, as
    trials finish in any order (a late finisher included)."""
    study = _random_trials(joint, 30, seed=9)
    trials = study.get_trials(deepcopy=False)
    history = History()
    order = list(range(30))
    random.Random(9).shuffle(order)
    for k in range(0, 30, 7):  # fold in growing, shuffled subsets, as workers finish
        seen = sorted(order[:k + 7])
        history.update("s", study.directions, [trials[i] for i in seen])
        part = [trials[i] for i in seen]
        assert [t.number for t in history.front] == [
            t.number for t in feasible_front(part, study.directions)]
        assert history.keys == {param_key(t.params) for t in part}
    history.update("other study", study.directions, [])
    assert not history.front and not history.keys  # a new study starts afresh


def test_pattern_move_repeats_a_successful_numeric_step():
    space = load_space("compression")
    grand = {"prune.method": "global", "prune.amount": 0.9, "quant.method": "lowbit",
             "quant.bits": 4, "quant.group_size": 0, "train.lr": 1e-3, "train.epochs": 2}
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial({**grand, "prune.amount": 0.93, "quant.bits": 3,
                         "quant.group_size": 16, "train.lr": 2e-3})
    t = study.ask()
    space.sample(t)
    study.tell(t, [0.98, 0.01])
    parent = study.trials[0]
    moved = pattern_move(space, parent, grand, np.random.RandomState(0))
    assert moved is not None
    assert moved["prune.amount"] == pytest.approx(0.96)
    assert moved["quant.bits"] == 2
    assert moved["train.lr"] == pytest.approx(4e-3)  # a log parameter doubles again
    assert moved["quant.group_size"] == 16  # a changed choice is kept, not stepped
    assert moved["train.epochs"] == 2
    # clipped at the range's end; nothing numeric moved -> no pattern move
    again = pattern_move(space, parent, {**grand, "prune.amount": 0.6}, np.random.RandomState(0))
    assert again is not None and again["prune.amount"] == pytest.approx(0.99)
    assert pattern_move(space, parent, dict(parent.params, **{"quant.group_size": 0}),
                        np.random.RandomState(0)) is None


def test_near_misses_are_undominated_and_broke_only_what_recovery_can_fix():
    study = optuna.create_study(directions=["maximize", "minimize"])
    for acc, size, cons in [
        (0.99, 1.0, {"accuracy_drop<=0.01": -0.001, "memory_budget": -1.0}),  # feasible
        (0.995, 0.5, {"accuracy_drop<=0.01": 0.002, "memory_budget": -1.0}),  # near miss
        (0.995, 0.4, {"accuracy_drop<=0.01": -0.002, "memory_budget": 0.3}),  # memory
        (0.98, 2.0, {"accuracy_drop<=0.01": 0.005, "memory_budget": -1.0}),  # dominated
    ]:
        t = study.ask()
        t.suggest_float("x", 0.0, 1.0)
        # as the runner stores them: named constraints plus the dashboard's legacy list
        store_results(t.storage, t, TrialResult([acc, size], {}, cons))
        study.tell(t, [acc, size])
    assert [t.number for t in History.near_misses_of(study)] == [1]
