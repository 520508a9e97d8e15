"""Bounded recovery and a cheap study start: `train.steps` counts optimizer steps, the
early stop ends recovery that cannot reach the guard or the front, the held-out subset
follows its standard-error rule, and teacher logits are computed once per batch."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from objectives import Workload, evaluate
from objectives.early_stop import RecoveryWatch
from objectives.errors import EarlyStopped
from objectives.lm.corpus import windows
from objectives.lm.replay import GenerationSettings
from objectives.lm.workload import LMData, make_lm_workload, next_token_metrics, subset_size
from objectives.pipeline import Reporter, base_accuracy, build_structure
from objectives.quantize import apply_runtime, quantize_weights
from objectives.groups import layer_plans
from objectives.train import finetune, planned_steps
from objectives.workloads.tiny_lm import build_tiny_lm
from search.study import baseline_config
from spaces import Config, TrainConfig, load_space


def _toy(n_batches: int = 3, evaluate=None) -> tuple[Workload, list[int]]:
    """A 4->3 linear classifier whose training forwards are counted."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    x, y = torch.randn(8 * n_batches, 4), torch.randint(0, 3, (8 * n_batches,))
    batches = [(x[i:i + 8], y[i:i + 8]) for i in range(0, len(x), 8)]
    calls: list[int] = []
    w = Workload(name="toy", model=model, request_inputs=x,
                 evaluate=evaluate or (lambda m: 1.0), train_batches=lambda: list(batches),
                 n_requests=40, concurrency=4)
    return w, calls


def _counting(model: nn.Module, calls: list[int]) -> None:
    model.register_forward_hook(lambda m, i, o: calls.append(int(m.training)))


def test_train_steps_bound_the_optimizer_steps_and_take_precedence_over_epochs():
    w, calls = _toy(n_batches=3)
    student = nn.Sequential(nn.Linear(4, 3))
    _counting(student, calls)
    assert finetune(student, w, TrainConfig(steps=7, epochs=5), {}, torch.device("cpu")) == 7
    assert sum(calls) == 7  # cycles the 3 batches, stops at 7 whatever the epochs say
    calls.clear()
    assert finetune(student, w, TrainConfig(epochs=2), {}, torch.device("cpu")) == 6
    assert sum(calls) == 6
    assert planned_steps(w, TrainConfig(steps=0, epochs=4)) == 0  # steps set: no epochs
    # A space with `train.steps` drops `train.epochs`; one without keeps it.
    assert "train.epochs" not in load_space("joint").names()
    assert "train.epochs" in load_space("compression").names()


def test_recovery_that_cannot_reach_the_guard_stops_early_and_says_where():
    w, _ = _toy(n_batches=2, evaluate=None)
    base = w.model
    w.evaluate = lambda m: 0.9 if m is base else 0.3  # never recovers
    with pytest.raises(EarlyStopped) as e:
        evaluate(w, Config.from_flat({"train.steps": 8}), budget_mb=10.0, accuracy_guard=0.01)
    info = e.value.info
    assert info["rule"] == "guard" and (info["step"], info["steps"]) == (3, 8)  # 2 checks
    assert info["seconds_saved"] >= 0 and e.value.metrics["accuracy_drop"] == pytest.approx(0.6)


def test_recovery_within_reach_of_the_guard_runs_all_its_steps():
    w, calls = _toy(n_batches=2)
    base = w.model
    w.evaluate = lambda m: 0.9 if m is base else 0.895  # meets the guard already
    _counting(base, calls)  # the trial's deep copy keeps the hook
    ev = evaluate(w, Config.from_flat({"train.steps": 8}), budget_mb=10.0, accuracy_guard=0.01)
    assert ev.metrics["accuracy"] == pytest.approx(0.895)
    assert sum(calls) == 8  # every step taken: two checks, no stop


def test_a_trial_the_front_dominates_stops_with_the_rule_named():
    class FrontReporter(Reporter):
        seen: list[dict[str, float]] = []

        def front_objectives(self):
            return ("accuracy", "size_mb")

        def dominated(self, known):
            self.seen.append(known)
            return "trial 0" if known["accuracy"] < 0.95 else None

    w, _ = _toy(n_batches=2)
    base = w.model
    w.evaluate = lambda m: 0.9 if m is base else 0.5
    rep = FrontReporter()
    with pytest.raises(EarlyStopped) as e:  # no guard: only the front can stop it
        evaluate(w, Config.from_flat({"train.steps": 8}), budget_mb=10.0, reporter=rep)
    assert e.value.info["rule"] == "dominated" and "trial 0" in e.value.reason
    assert rep.seen[0]["size_mb"] > 0  # the size is known before recovery ends
    # The first check's optimism: the measured 0.5 plus the hopeless margin.
    assert rep.seen[0]["accuracy"] == pytest.approx(0.5 + 0.21)


def test_the_watch_projects_the_latest_gain():
    w, _ = _toy()
    watch = RecoveryWatch(w, w.model, base_accuracy=0.8, guard=0.01)
    w.evaluate = lambda m: 0.6
    watch(2, 8)  # first check: at best 0.6 + 0.21, within the guard of 0.8: goes on
    w.evaluate = lambda m: 0.62
    with pytest.raises(EarlyStopped):  # 0.62 + 2 * 0.01/step * 4 steps + 0.01 = 0.71
        watch(4, 8)


def test_subset_size_stops_at_the_first_chunk_below_half_the_guard():
    accs = [0.4, 0.6] * 32  # per-window accuracies with sd ~0.1
    se = lambda n: float(torch.tensor(accs[:n]).double().std()) / math.sqrt(n)  # noqa: E731
    assert se(16) > 0.022 > se(24)
    assert subset_size(accs, guard=0.044) == 24
    assert subset_size(accs, guard=1.0) == 16  # never fewer than the minimum
    assert subset_size(accs, guard=0.01) is None  # all 64 windows are not enough: use all


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    model = build_tiny_lm(40, (32, 2, 4, 2, 64))
    ids = torch.randint(0, 40, (6000,))
    data = LMData(train=windows(ids, 33, 16, seed=1), heldout=windows(ids, 65, 40),
                  prompts=[[1, 2, 3]] * 4)
    return make_lm_workload("t", model, data, batch_size=8, memory_budget_mb=5.0,
                            settings=GenerationSettings(new_tokens=2, n_requests=4,
                                                        concurrency=2))


def test_lm_base_accuracy_settles_a_subset_that_every_evaluation_uses(lm):
    base = base_accuracy(lm, guard=0.5)  # a loose guard: the minimum subset suffices
    subset = lm.extras["heldout_subset"]
    assert subset.n == 16 and len(subset.current()) == 16 < len(subset.windows)
    assert lm._cache["base_measured"]["heldout_windows"] == 16
    assert base == pytest.approx(next_token_metrics(lm.model, subset.current(), 16)["accuracy"])
    assert lm.evaluate(lm.model) == pytest.approx(base)
    # The baseline reuses that measurement instead of evaluating the model again.
    ev = evaluate(lm, baseline_config(lm), budget_mb=5.0, accuracy_guard=0.5,
                  is_baseline=True)
    assert ev.metrics["accuracy"] == base and ev.metrics["accuracy_drop"] == 0


def _head_2bit(lm):
    """The base model with only its output layer at 2-bit lowbit, as a probe builds it."""
    cfg = Config.from_flat({"quant.method[lm_head]": "lowbit", "quant.bits[lm_head]": 2})
    model = build_structure(lm, cfg, torch.device("cpu"))
    _, plan = layer_plans(lm, model, cfg)
    codes = quantize_weights(model, cfg.quant, plan)
    return apply_runtime(model, cfg.quant, torch.device("cpu"), plan, codes)


def test_a_head_probe_from_cached_hidden_states_equals_a_full_evaluation(lm):
    base_accuracy(lm, guard=0.5)
    subset = lm.extras["heldout_subset"]
    model = _head_2bit(lm)
    assert subset.head_name(lm.model) == "lm.lm_head"
    fast = subset.head_metrics(lm.model, model)
    full = next_token_metrics(model, subset.current(), 16)
    assert fast["accuracy"] == pytest.approx(full["accuracy"])
    assert fast["perplexity"] == pytest.approx(full["perplexity"], rel=1e-4)


def test_teacher_logits_are_computed_once_per_batch_across_trials(lm):
    students = [build_structure(lm, Config(), torch.device("cpu")) for _ in range(2)]
    teacher_calls: list[int] = []
    hook = lm.model.register_forward_hook(lambda m, i, o: teacher_calls.append(1))
    try:
        for student in students:  # two trials distilling in one process
            finetune(student, lm, TrainConfig(steps=4, kd_alpha=0.5), {}, torch.device("cpu"))
    finally:
        hook.remove()
    assert len(teacher_calls) == 2  # 16 windows / batch 8 = two distinct batches


def test_a_probe_drop_is_paired_with_the_fp32_windows_and_stops_at_its_standard_error(lm):
    base_accuracy(lm, guard=0.5)
    subset = lm.extras["heldout_subset"]
    model = _head_2bit(lm)
    exact = subset.probe_drop(lm.model, model, guard=1e-9, head_only=True)
    assert exact["windows"] == 16  # an impossible standard error: every window
    full = lm._cache["base_accuracy"] - subset.head_metrics(lm.model, model)["accuracy"]
    assert exact["drop"] == pytest.approx(full)
    # The same through the whole model (no hidden-state reuse) gives the same drop.
    assert subset.probe_drop(lm.model, model, guard=1e-9)["drop"] == pytest.approx(full)
    assert subset.probe_drop(lm.model, model, guard=0.5, head_only=True)["windows"] == 8


def test_the_runner_names_the_feasible_front_trial_that_dominates():
    from types import SimpleNamespace

    import optuna

    from search.runner import _TrialReporter

    study = optuna.create_study(directions=["maximize", "minimize"])
    for values, margin in (([0.9, 2.0], -1.0), ([0.99, 1.0], 5.0)):  # feasible, infeasible
        study.add_trial(optuna.trial.create_trial(
            values=values, system_attrs={"constraints:memory_budget": margin}))
    spec = SimpleNamespace(metric_names=["accuracy", "size_mb"],
                           directions=["maximize", "minimize"])
    rep = _TrialReporter(study.ask(), SimpleNamespace(ctx=SimpleNamespace(spec=spec),
                                                      interrupt=None))
    assert rep.front_objectives() == ("accuracy", "size_mb")
    assert rep.dominated({"accuracy": 0.8, "size_mb": 3.0}).startswith("trial 0 (")
    assert rep.dominated({"accuracy": 0.95, "size_mb": 3.0}) is None  # the infeasible one
    assert rep.dominated({"accuracy": 0.8, "size_mb": 1.5}) is None  # smaller: not dominated
