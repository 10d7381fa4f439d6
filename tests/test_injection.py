"""Users swap a class, not fork the framework: runner, learner and engine classes come from config."""

from __future__ import annotations

from typing import Any, ClassVar

from actorlearner.learn.learner import Learner
from actorlearner.rollout.engine import HFEngine
from actorlearner.rollout.engines import ENGINES
from actorlearner.rollout.runner import EnvRunner
from tests.conftest import small_config


class CountingRunner(EnvRunner):
    """A user's runner: counts the groups it plays."""

    played = 0

    async def run_group(self, seed: int, policy: Any = None) -> Any:
        type(self).played += 1
        return await super().run_group(seed, policy)


class CountingLearner(Learner):
    """A user's learner: counts its updates."""

    updates = 0

    def update(self, groups: Any) -> dict[str, float]:
        type(self).updates += 1
        return super().update(groups)


class GreedyHF(HFEngine):
    """A user's engine: the HF engine, built with an extra option it records."""

    built_with: ClassVar[dict[str, Any]] = {}

    def __init__(self, model_path: str, seed: int = 0, tag: str = "") -> None:
        super().__init__(model_path, seed=seed)
        type(self).built_with = {"tag": tag}


def test_runner_learner_and_engine_classes_come_from_the_config(tmp_path) -> None:
    ENGINES.register("test_greedy_hf")(GreedyHF)
    try:
        config = small_config(tmp_path).env_runners(
            env_runner_cls=CountingRunner, engine="test_greedy_hf", engine_options={"tag": "mine"}
        )
        config = config.learners(learner_cls=f"{__name__}:CountingLearner")
        algo = config.build()
        try:
            algo.train()
            runner = algo.runners[0].obj
            assert isinstance(runner, CountingRunner) and isinstance(runner.engine, GreedyHF)
            assert isinstance(algo.learner.obj, CountingLearner)  # type: ignore[attr-defined]
        finally:
            algo.stop()
    finally:
        ENGINES.unregister("test_greedy_hf")
    assert CountingRunner.played >= 2 and CountingLearner.updates == 1
    assert GreedyHF.built_with == {"tag": "mine"}
