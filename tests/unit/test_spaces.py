"""Search spaces: sampling with conditions, FixedTrial round trips, TOML validation."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from spaces import Config, SpaceError, builtin_spaces, load_space, parse_space

BUILTINS = sorted(builtin_spaces())


def _sampled_trials(space, n: int = 25, seed: int = 0):
    """Run `n` random trials that only sample the space; return (frozen trial, config)."""
    configs: dict[int, Config] = {}

    def objective(trial: optuna.Trial) -> float:
        configs[trial.number] = space.sample(trial)
        return 0.0

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    study.optimize(objective, n_trials=n)
    return [(t, configs[t.number]) for t in study.trials]


def test_builtin_spaces_are_the_documented_ones():
    assert {"compression", "serving", "training", "joint", "lm", "lm-budget"} <= set(BUILTINS)


@pytest.mark.parametrize("name", BUILTINS)
def test_fixed_trial_rebuilds_the_config_of_a_real_trial(name):
    space = load_space(name)
    for trial, config in _sampled_trials(space):
        assert space.sample(optuna.trial.FixedTrial(trial.params)) == config
        # Every sampled value lands in the config under its dotted name.
        flat = config.flat()
        for key, value in trial.params.items():
            assert flat[key] == value


@pytest.mark.parametrize("name", BUILTINS)
def test_source_parses_back_to_the_same_space(name):
    space = load_space(name)
    again = parse_space(space.source, name=space.name)
    assert again == space
    assert again.names() == space.names()


def test_conditional_parameters_follow_when():
    space = load_space("compression")
    methods = set()
    for trial, config in _sampled_trials(space, n=60, seed=1):
        p = trial.params
        methods.add(p["prune.method"])
        assert ("prune.threshold" in p) == (p["prune.method"] == "magnitude")
        assert ("prune.amount" in p) == (p["prune.method"] == "global")
        assert ("prune.structured_ratio" in p) == (p["prune.method"] == "structured")
        assert ("quant.bits" in p) == (p["quant.method"] == "lowbit")
        assert ("quant.group_size" in p) == (p["quant.method"] == "lowbit")
        if p["prune.method"] != "magnitude":
            assert config.prune.threshold == 0.0  # inactive parameter keeps its default
    assert methods == {"none", "magnitude", "global", "structured"}


def test_left_out_parameters_take_defaults():
    space = parse_space('[params."serve.cache_ratio"]\ntype = "float"\nlow = 0.1\nhigh = 0.2\n')
    config = space.sample(optuna.trial.FixedTrial({"serve.cache_ratio": 0.15}))
    assert config.serve.cache_ratio == 0.15
    assert config.prune == Config().prune and config.train == Config().train


def test_a_workloads_defaults_fill_only_left_out_parameters():
    space = parse_space('[params."serve.cache_ratio"]\ntype = "float"\nlow = 0.1\nhigh = 0.2\n')
    space = space.with_defaults({"serve.cache_ratio": 0.5, "serve.memory_ratio": 0.15}, "test")
    config = space.sample(optuna.trial.FixedTrial({"serve.cache_ratio": 0.12}))
    assert config.serve.cache_ratio == 0.12  # declared: sampled, the default never applies
    assert config.serve.memory_ratio == 0.15  # left out: the workload's value
    with pytest.raises(SpaceError, match="serve.memory_ratio"):
        space.with_defaults({"serve.memory_ratio": 2.0}, "test")


def test_joint_includes_every_builtin_parameter():
    joint = set(load_space("joint").names())
    for name in ("compression", "serving", "training"):
        # but compression's `train.epochs`: joint searches `train.steps`, which takes
        # precedence (a space declaring both drops epochs)
        assert set(load_space(name).names()) - {"train.epochs"} <= joint
    assert "train.steps" in joint and "train.epochs" not in joint


# --- validation ------------------------------------------------------------------------

P = '[params."{name}"]\n'


@pytest.mark.parametrize(
    "text, needle",
    [
        ('[params."prune.method"\nchoices = ["none"]\n', "malformed TOML"),
        (P.format(name="prune.bogus") + "type = \"float\"\nlow = 0\nhigh = 1\n", "prune.bogus"),
        (P.format(name="train.lr") + "type = \"float\"\nlow = 0.1\nhigh = 0.01\n", "low=0.1"),
        (P.format(name="prune.threshold") + "type = \"float\"\nlow = 0.0\nhigh = 0.1\n"
         "log = true\n", "low=0.0"),
        (P.format(name="quant.method") + 'choices = ["none", "int3"]\n', "int3"),
        (P.format(name="quant.bits") + "choices = [4, 9]\n", "9"),
        (P.format(name="train.lr") + "type = \"float\"\nlow = 0.001\nhigh = 0.01\nlgo = true\n",
         "lgo"),
        ("sapce = 1\n", "sapce"),
        (P.format(name="prune.threshold") + 'type = "float"\nlow = 0.0\nhigh = 0.1\n'
         'when = { "prune.method" = "magnitude" }\n'
         + P.format(name="prune.method") + 'choices = ["none", "magnitude"]\n', "prune.method"),
        (P.format(name="prune.threshold") + 'type = "float"\nlow = 0.0\nhigh = 0.1\n'
         'when = { "prune.style" = "magnitude" }\n', "prune.style"),
        (P.format(name="prune.amount") + 'type = "float"\nlow = 0.5\nhigh = 1.5\n', "1.5"),
        (P.format(name="quant.bits") + 'type = "int"\nlow = 2.5\nhigh = 4\n', "2.5"),
    ],
    ids=["malformed", "unknown-param", "inverted-range", "log-low-zero", "bad-choice",
         "choice-out-of-range", "unknown-key", "unknown-top-level-key", "when-later",
         "when-unknown", "outside-valid-range", "int-not-whole"],
)
def test_invalid_space_raises_space_error_naming_the_bad_value(text, needle):
    with pytest.raises(SpaceError) as info:
        parse_space(text, name="bad.toml")
    message = str(info.value)
    assert needle in message
    assert "\n" not in message.strip()  # the CLI prints it as one line


def test_when_on_a_value_the_parameter_cannot_take_is_refused():
    """A typo in a condition value would silently switch the parameter off for good."""
    text = (P.format(name="prune.method") + 'choices = ["none", "magnitude"]\n'
            + P.format(name="prune.threshold") + 'type = "float"\nlow = 0.0\nhigh = 0.1\n'
            'when = { "prune.method" = "magnitud" }\n')
    with pytest.raises(SpaceError, match="magnitud"):
        parse_space(text)


def test_include_cycle_is_refused(tmp_path: Path):
    (tmp_path / "a.toml").write_text('include = ["b.toml"]\n')
    (tmp_path / "b.toml").write_text('include = ["a.toml"]\n')
    with pytest.raises(SpaceError, match="cycle"):
        load_space(str(tmp_path / "a.toml"))
    (tmp_path / "self.toml").write_text('include = ["self.toml"]\n')
    with pytest.raises(SpaceError, match="cycle"):
        load_space(str(tmp_path / "self.toml"))


def test_missing_include_names_it(tmp_path: Path):
    (tmp_path / "a.toml").write_text('include = ["serving", "nowhere.toml"]\n')
    with pytest.raises(SpaceError, match="nowhere.toml"):
        load_space(str(tmp_path / "a.toml"))


def test_unknown_space_reference_names_it():
    with pytest.raises(SpaceError, match="no-such-space"):
        load_space("no-such-space")


def test_include_composes_a_builtin_and_a_path(tmp_path: Path):
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "lr.toml").write_text(
        P.format(name="train.lr") + 'type = "float"\nlow = 0.001\nhigh = 0.1\nlog = true\n')
    (tmp_path / "mine.toml").write_text(
        'include = ["serving", "extra/lr.toml"]\n'
        + P.format(name="serve.batch_size") + "choices = [2, 8]\n")
    space = load_space(str(tmp_path / "mine.toml"))
    serving = load_space("serving")
    assert set(space.names()) == set(serving.names()) | {"train.lr"}
    params = {p.name: p for p in space.params}
    # The including file's own definition replaces the included one.
    assert params["serve.batch_size"].choices == (2, 8)
    assert params["train.lr"].log and params["train.lr"].low == 0.001
    assert params["serve.cache_ratio"] == {p.name: p for p in serving.params}["serve.cache_ratio"]
    # The resolved source needs no files any more.
    assert parse_space(space.source, name=space.name) == space
    config = space.sample(optuna.trial.FixedTrial(
        {"serve.batch_size": 8, "serve.threads": 2, "serve.cache_ratio": 0.3,
         "serve.memory_ratio": 0.1, "train.lr": 0.01}))
    assert config.serve.batch_size == 8 and config.train.lr == 0.01


def test_parse_space_resolves_includes_against_base_dir(tmp_path: Path):
    (tmp_path / "part.toml").write_text(P.format(name="serve.threads") + "choices = [1, 2]\n")
    space = parse_space('include = ["part.toml"]\n', base_dir=tmp_path)
    assert space.names() == ["serve.threads"]
