"""The sensitivity pass: measured once per study, stored, and used to narrow and seed."""

from __future__ import annotations

import optuna

import objectives.sensitivity as sensitivity_mod
from search.runner import run_trials
from search.sensitivity import narrow, pinned_groups, sensitivity_seeds
from search.study import build_spec, create_or_resume, load_context

EXAMPLE = "compression"  # the built-in space has per-group templates


def _spec(trials: int):
    return build_spec(workload="digits-cnn", space=EXAMPLE, objectives=("accuracy:max",
                      "size_mb:min"), constraints=("accuracy_drop<=0.01",), sampler="tpe",
                      seed=2, device="cpu", trials=trials, timeout=None,
                      memory_budget_mb=None, artifacts=None)


def test_sensitivity_runs_once_per_study_not_per_worker_or_trial(monkeypatch):
    calls = []
    real = sensitivity_mod.group_sensitivity

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(sensitivity_mod, "group_sensitivity", counting)
    storage = optuna.storages.InMemoryStorage()
    spec = _spec(3)
    study, created = create_or_resume(storage, "s", spec, load_context(spec))
    assert created and len(calls) == 1
    sens = study.user_attrs["sensitivity"]
    assert set(sens["drops"]) == {"conv1", "conv2", "fc1", "fc2"}
    assert set(sens["drops"]["fc1"]) == {"int8_dynamic", "lowbit4", "prune50"}
    # Two "workers" and a resume: none of them measures again.
    for _ in range(2):
        run_trials(study, load_context(spec))
    create_or_resume(storage, "s", spec, load_context(spec))
    assert len(calls) == 1
    assert len([t for t in study.trials if t.state.is_finished()]) == 3
    seeded = [t for t in study.trials if t.user_attrs.get("seeded") == "sensitivity"]
    assert seeded, "the first worker queues a sensitivity-guided seed"


def test_a_group_that_breaks_the_guard_is_pinned_to_fp32(digits):
    space_ctx = load_context(_spec(1))
    sens = {"guard": 0.01, "probes": {}, "drops": {
        "conv1": {"int8_dynamic": 0.5, "lowbit4": 0.6},  # fragile
        "conv2": {"int8_dynamic": 0.0, "lowbit4": 0.001},
        "fc1": {"int8_dynamic": 0.0, "lowbit4": 0.0},
        "fc2": {"int8_dynamic": 0.002, "lowbit4": 0.02},
    }, "weights": {"conv1": 144, "conv2": 4608, "fc1": 131072, "fc2": 2560}}
    assert pinned_groups(sens) == ["conv1"]
    narrowed = narrow(space_ctx.space, sens)
    by_name = {p.name: p for p in narrowed.params}
    assert by_name["quant.method[conv1]"].choices == ("none",)
    assert "lowbit" in by_name["quant.method[fc1]"].choices
    plain, mixed = sensitivity_seeds(space_ctx.space, sens)
    assert plain["quant.method[conv1]"] == "none"
    assert plain["quant.method[fc1]"] == "lowbit" and plain["quant.bits[fc1]"] == 4
    assert plain["quant.method[fc2]"] == "int8_dynamic"
    assert plain["prune.method"] == "none" and plain["train.epochs"] == 0
    # Deep Compression's per-layer rates: the group holding most weights is pruned and
    # narrowed hardest; small groups keep more, and a fragile one keeps 8 bits.
    assert mixed["prune.method"] == "global" and mixed["train.epochs"] == 4
    assert (mixed["prune.amount[fc1]"], mixed["quant.bits[fc1]"]) == (0.95, 2)
    assert (mixed["prune.amount[conv2]"], mixed["quant.bits[conv2]"]) == (0.6, 4)
    assert (mixed["prune.amount[fc2]"], mixed["quant.bits[fc2]"]) == (0.6, 8)
    study = optuna.create_study()
    for params in (plain, mixed):  # every seeded value is one the space can take
        study.enqueue_trial(params)
        trial = study.ask()
        space_ctx.space.sample(trial)
        assert {k: trial.params.get(k) for k in params} == params


def test_seed_spends_the_guard_where_it_saves_the_most_bits():
    from search.sensitivity import SEED_MARGIN, budgeted_choice

    methods = {g: ("inherit", "none", "int8_dynamic", "lowbit") for g in "abc"}
    sens = {"guard": 0.01, "weights": {"a": 1_000_000, "b": 1_000, "c": 500_000},
            "drops": {"a": {"int8_dynamic": 0.006, "lowbit4": 0.03},
                      "b": {"int8_dynamic": 0.001, "lowbit4": 0.002},
                      "c": {"int8_dynamic": 0.004, "lowbit4": 0.05}}}
    choice = budgeted_choice(sens, methods)
    # a (the biggest group) and b fit the 0.008 budget; c would break it.
    assert choice == {"a": "int8_dynamic", "b": "lowbit4", "c": "none"}
    spent = sum(sens["drops"][g][label] for g, label in choice.items() if label != "none")
    assert spent <= SEED_MARGIN * sens["guard"]
    # Without int8 in a group's choices, that group never takes it.
    methods["a"] = ("inherit", "none", "lowbit")
    assert budgeted_choice(sens, methods)["a"] == "none"


def test_report_collects_the_sensitivity_table():
    from search.report import collect_sensitivity

    study = optuna.create_study()
    study.set_user_attr("sensitivity", {"guard": 0.01, "probes": {}, "drops": {
        "a": {"int8_dynamic": 0.2}, "b": {"int8_dynamic": 0.001}}})
    data = collect_sensitivity(study)
    assert data.groups == ["a", "b"] and data.probes == ["int8_dynamic"]
    assert data.drops == [[0.2], [0.001]] and data.pinned == ["a"]
