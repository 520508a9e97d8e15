"""The default sampler: Optuna's TPE exactly on short studies, a bounded window of the
history (feasible front, recent trials, running trials) on long ones."""

from __future__ import annotations

import random
import warnings

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from search.samplers import TPE_WINDOW, WindowedTPESampler, make_sampler
from spaces import Space, load_space

GROUPS = ["conv1", "conv2", "fc1", "fc2"]
DIRECTIONS = ["maximize", "minimize", "minimize"]  # accuracy, latency_mean_ms, size_mb


@pytest.fixture(scope="module")
def joint() -> Space:
    """The `joint` space as a 4-group workload searches it (27 parameters, conditional)."""
    return load_space("joint").expand(GROUPS, {"prune.amount": GROUPS,
                                               "prune.threshold": GROUPS})


def optuna_tpe(seed: int) -> optuna.samplers.TPESampler:
    """What `make_sampler("tpe")` returned before the window."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(multivariate=True, group=True, constant_liar=True,
                                          seed=seed)


def outcome(params: dict, rng: random.Random) -> tuple[TrialState, list[float], dict]:
    """A deterministic digits-shaped result: state, (accuracy, latency, size), constraints."""
    sparsity = {"none": 0.0, "magnitude": 5 * params.get("prune.threshold", 0.0),
                "global": params.get("prune.amount", 0.0),
                "structured": params.get("prune.structured_ratio", 0.0)}[params["prune.method"]]
    bits = {"none": 32, "int8_dynamic": 8, "lowbit": params.get("quant.bits", 8)}[
        params["quant.method"]]
    acc = 0.99 - 0.4 * max(0.0, sparsity - 0.7) - (0.3 if bits <= 2 else 0.02 / bits)
    epochs = round(params.get("train.steps", 16 * params.get("train.epochs", 0)) / 16)
    acc += 0.002 * epochs - 0.005 * rng.random()
    size = 0.556 * (1 - 0.9 * min(sparsity, 1.0)) * bits / 32
    latency = 1 + 10 * (0.6 - params["serve.cache_ratio"]) + rng.random()
    constraints = {"accuracy_drop<=0.01": (0.99 - acc) - 0.01,
                   "memory_budget": size + params["serve.memory_ratio"] - 0.35}
    fate = rng.random()
    state = TrialState.PRUNED if fate < 0.04 else TrialState.FAIL if fate < 0.06 else \
        TrialState.COMPLETE
    return state, [acc, latency, size], constraints


def finish(study: optuna.Study, trial: optuna.Trial, rng: random.Random) -> None:
    state, values, constraints = outcome(trial.params, rng)
    if state != TrialState.COMPLETE:
        study.tell(trial, state=state)
        return
    for name, value in constraints.items():
        trial.set_constraint(name, value)
    study.tell(trial, values)


def run(sampler: optuna.samplers.BaseSampler, space: Space, n: int,
        seed: int = 0) -> optuna.Study:
    """`n` trials as two interleaved workers would leave them: every other trial is asked
    while another is RUNNING (the constant liar sees it) and finishes after it, and the
    study starts with an enqueued config, as `csearch run`'s warm start does."""
    study = optuna.create_study(directions=DIRECTIONS, sampler=sampler)
    study.enqueue_trial({"prune.method": "none", "quant.method": "int8_dynamic"})
    rng = random.Random(seed)
    while len(study.get_trials(deepcopy=False)) < n:
        a = study.ask()
        space.sample(a)
        b = study.ask()
        space.sample(b)
        finish(study, b, rng)  # b, numbered after a, finishes first
        finish(study, a, rng)
    return study


def test_below_the_window_suggestions_are_optunas_tpe_exactly(joint):
    n = 60
    ours = run(make_sampler("tpe", 7, joint), joint, n)
    theirs = run(optuna_tpe(7), joint, n)
    assert isinstance(ours.sampler, WindowedTPESampler) and n < TPE_WINDOW
    states = {t.state for t in ours.trials}
    assert {TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL} <= states
    assert [t.params for t in ours.trials] == [t.params for t in theirs.trials]
    # ... and they are not what another seed gives
    assert [t.params for t in run(make_sampler("tpe", 8, joint), joint, 20).trials] != \
        [t.params for t in ours.trials][:20]


def test_same_seed_same_suggestions_past_the_window(joint):
    a = run(WindowedTPESampler(window=25, multivariate=True, group=True, seed=3), joint, 70)
    b = run(WindowedTPESampler(window=25, multivariate=True, group=True, seed=3), joint, 70)
    assert [t.params for t in a.trials] == [t.params for t in b.trials]
    c = run(optuna_tpe(3), joint, 70)
    assert [t.params for t in a.trials] != [t.params for t in c.trials]  # the window acts


def _modelled(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def _dominates(a: FrozenTrial, b: FrozenTrial) -> bool:
    signs = [-1, 1, 1]  # accuracy is maximised
    la = [s * v for s, v in zip(signs, a.values)]
    lb = [s * v for s, v in zip(signs, b.values)]
    return all(x <= y for x, y in zip(la, lb)) and la != lb


def test_window_is_the_best_feasible_the_recent_and_the_running(joint):
    window, best = 20, 16
    sampler = WindowedTPESampler(window=window, best=best, multivariate=True, group=True,
                                 seed=1)
    study = run(sampler, joint, 90)
    # A dominating but infeasible trial, and one still RUNNING elsewhere.
    study.add_trial(optuna.trial.create_trial(
        params={}, distributions={}, values=[1.0, 0.0, 0.0],
        system_attrs={"constraints:memory_budget": 0.5}))
    elsewhere = study.ask()
    current = study.ask()
    history = sampler._read_history(study, study._storage.get_trial(current._trial_id))

    trials = study.get_trials(deepcopy=False)
    feasible = [t for t in trials if t.state == TrialState.COMPLETE
                and all(v <= 0 for v in t.constraints.values())]
    front = study.best_trials  # Optuna's feasible Pareto front of all trials
    elite = {t.number for t in sampler._elite}
    assert 0 < len(front) < best == len(elite) < len(_modelled(trials)) - window
    assert {t.number for t in front} <= elite <= {t.number for t in feasible}
    for t in feasible:  # the ones left out are worse than one kept
        if t.number not in elite:
            assert any(_dominates(e, t) for e in sampler._elite)
    expected = elite | {t.number for t in _modelled(trials)[-window:]} | {elsewhere.number}
    assert [t.number for t in history] == sorted(expected)
    infeasible_best = trials[-3]
    assert infeasible_best.values == [1.0, 0.0, 0.0]
    assert infeasible_best.number in expected  # recent, so modelled ...
    assert infeasible_best.number not in elite  # ... but not as one of the best


def test_late_finishers_reach_the_front_and_the_search_space(joint):
    """A trial that finishes after later-numbered ones still counts among the best and in
    the parameter groups (both are kept incrementally)."""
    sampler = WindowedTPESampler(window=10, multivariate=True, group=True, seed=2)
    study = run(sampler, joint, 40)
    slow = study.ask()
    joint.sample(slow)
    for _ in range(15):
        t = study.ask()
        joint.sample(t)
        study.tell(t, state=TrialState.FAIL)
    study.tell(slow, [1.0, 0.0, 0.0])  # dominates everything, feasible (no constraints)
    t = study.ask()
    joint.sample(t)
    numbers = [x.number for x in sampler._read_history(study, study._storage.get_trial(
        t._trial_id))]
    assert slow.number in numbers
    assert study.trials[slow.number] in sampler._elite
    assert study.best_trials == [study.trials[slow.number]]
    grouped = optuna_tpe(2)._group_decomposed_search_space.calculate(study)
    ours = sampler._group_decomposed_search_space.calculate(study)
    assert [sorted(s) for s in ours.search_spaces] == [sorted(s) for s in grouped.search_spaces]


def test_windowed_tpe_honours_constraints():
    """Minimise (x, y) subject to x + y >= 1: past the window TPE keeps to the feasible
    boundary; told nothing about the constraint it chases the corner (0, 0)."""
    def late_mean_sum(constrained: bool) -> float:
        def objective(trial: optuna.Trial) -> tuple[float, float]:
            x, y = trial.suggest_float("x", 0, 1), trial.suggest_float("y", 0, 1)
            if constrained:
                trial.set_constraint("x+y>=1", 1 - x - y)
            return x, y

        sampler = WindowedTPESampler(window=30, multivariate=True, seed=0)
        study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
        study.optimize(objective, n_trials=150)
        return sum(sum(t.params.values()) for t in study.trials[-60:]) / 60

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    honoured, blind = late_mean_sum(True), late_mean_sum(False)
    assert honoured >= 0.9 and blind < 0.75  # measured: 0.98 and 0.52


def test_window_must_be_positive():
    with pytest.raises(ValueError, match="window"):
        WindowedTPESampler(window=0)


def test_a_large_front_is_cut_to_its_most_spread_trials(joint):
    best = 8
    sampler = WindowedTPESampler(window=20, best=best, multivariate=True, group=True, seed=1)
    study = run(sampler, joint, 150)
    current = study.ask()
    history = {t.number for t in sampler._read_history(study, study._storage.get_trial(
        current._trial_id))}
    front = study.best_trials
    assert len(front) > best
    kept = {t.number for t in sampler._elite}
    assert len(kept) == best and kept <= history
    for i, sign in enumerate([-1, 1, 1]):  # every objective's best trial is kept
        assert min(front, key=lambda t: sign * t.values[i]).number in kept
