"""VLLMEngine passes the hf engine's tests, and the two engines agree on the same weights.

Both engines run the tiny model in float32 on this CPU. Agreement tolerance: greedy ids must be
equal and logprobs within 1e-4 (measured: 5e-7; both compute the same float32 math, in other
kernel orders, and a logprob of -x differs by about x * 1e-7 relative).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from actorlearner.core.protocols import SamplingParams
from actorlearner.models.tiny import build_tiny_model
from actorlearner.rollout.engine import HFEngine
from actorlearner.rollout.engines import make_engine
from actorlearner.rollout.vllm_engine import VLLMEngine
from tests.engine_contract import check_generate_shapes, check_stops_at_stop_ids, random_prompts

CORPUS = ["What is 37 * 52? Use the calculator tool.", "<tool_call></tool_call><answer></answer>"]
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(CORPUS, tmp_path_factory.mktemp("vllm") / "m", num_layers=2)


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> VLLMEngine:
    """One engine for the module: vLLM keeps process-wide state, so a process holds one engine."""
    return make_engine("vllm", model_dir, seed=0, max_model_len=256)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def hf(model_dir: Path) -> HFEngine:
    return HFEngine(model_dir, seed=0)


_prompts = random_prompts


def _recomputed(model: torch.nn.Module, prompts, gens, temperature: float) -> list[list[float]]:
    """Logprobs of the generated ids, one full forward pass each, with the transformers model."""
    out = []
    for p, g in zip(prompts, gens, strict=True):
        ids = torch.tensor([p + g.token_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits.float()[0]
        logp = torch.log_softmax(logits / (temperature if temperature > 0 else 1.0), dim=-1)
        pos = torch.arange(len(p) - 1, len(p) - 1 + len(g.token_ids))
        out.append(logp[pos, torch.tensor(g.token_ids)].tolist())
    return out


def test_make_engine_builds_the_registered_vllm_engine(engine: VLLMEngine) -> None:
    assert type(engine) is VLLMEngine and engine.version == 0


def test_generate_shapes_and_lengths(engine: VLLMEngine) -> None:
    check_generate_shapes(engine)


def test_stops_at_stop_ids_and_keeps_the_stop_id(engine: VLLMEngine) -> None:
    check_stops_at_stop_ids(engine, tolerance=TOLERANCE)


def test_greedy_matches_the_hf_engine_ids_and_logprobs(engine: VLLMEngine, hf: HFEngine) -> None:
    prompts = _prompts(7, seed=2, lo=2, hi=30)
    params = SamplingParams(temperature=0.0, max_new_tokens=12)
    ours, theirs = engine.generate(prompts, params), hf.generate(prompts, params)
    for a, b in zip(ours, theirs, strict=True):
        assert a.token_ids == b.token_ids
        assert a.logprobs == pytest.approx(b.logprobs, abs=TOLERANCE)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_are_at_the_sampling_temperature(
    engine: VLLMEngine, hf: HFEngine, temperature: float
) -> None:
    prompts = _prompts(9, seed=3, lo=2, hi=30)
    gens = engine.generate(prompts, SamplingParams(temperature=temperature, max_new_tokens=15))
    for g, lp in zip(gens, _recomputed(hf.model, prompts, gens, temperature), strict=True):
        assert g.logprobs == pytest.approx(lp, abs=TOLERANCE)


def test_weights_are_updated_in_place_and_agree_with_the_hf_engine(
    engine: VLLMEngine, model_dir: Path
) -> None:
    """Last in the module: it leaves the engine with other weights."""
    ours, theirs = engine, HFEngine(model_dir, seed=0)
    prompts, params = _prompts(6, seed=6), SamplingParams(temperature=0.0, max_new_tokens=8)
    before = [g.token_ids for g in ours.generate(prompts, params)]
    gen = torch.Generator().manual_seed(0)
    weights = {k: (v + 0.5 * torch.randn(v.shape, generator=gen)) for k, v in theirs.state_dict().items()}
    if theirs.model.config.tie_word_embeddings:  # one tensor under two names, as a learner publishes it
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    ours.load_weights({k: v.numpy() for k, v in weights.items()}, version=3)
    theirs.load_weights(weights, version=3)
    after, expected = ours.generate(prompts, params), theirs.generate(prompts, params)
    assert [g.token_ids for g in after] != before  # the same engine object now samples the new weights
    assert all(g.version == 3 for g in after) and ours.version == 3
    for a, b in zip(after, expected, strict=True):
        assert a.token_ids == b.token_ids
        assert a.logprobs == pytest.approx(b.logprobs, abs=TOLERANCE)
    # The prefix cache was reset: the same prompts again give the same turns, not the old weights' ones.
    assert [g.token_ids for g in ours.generate(prompts, params)] == [g.token_ids for g in after]
    with pytest.raises(RuntimeError, match=r"no value for \['model.norm.weight'\]"):
        ours.load_weights({k: v for k, v in weights.items() if k != "model.norm.weight"}, version=4)


@pytest.mark.ray
def test_the_shipped_vllm_config_trains_on_ray_with_two_learners(ray_session, tmp_path: Path) -> None:
    """configs/calculator_vllm.yaml on a smoke budget: two runners generate with vLLM, two learners
    train as one group; the group's weights reach the runners in their push replies."""
    from actorlearner.config import AlgorithmConfig
    from actorlearner.runtime.group import LearnerGroup
    from tests.conftest import SMALL_MODEL

    algo = (
        AlgorithmConfig.from_yaml("configs/calculator_vllm.yaml")
        .env_runners(groups_in_flight=4, group_size=4, max_new_tokens=16, max_tokens=96)
        .training(num_iterations=6, train_batch_groups=2, lr=1e-3)
        .sft(enabled=False)
        .replay(filters=[])
        .evaluation(num_episodes=8)
        .model(**{**SMALL_MODEL, "hidden_size": 64})  # vLLM's CPU attention: head_dim 32, not 16
        .reporting(run_dir=str(tmp_path / "runs"), progress=False)
        .build()
    )
    try:
        assert isinstance(algo.learner, LearnerGroup) and len(algo.learner.members) == 2
        metrics = [algo.train() for _ in range(6)]
        assert all(m["learner/trajectories"] > 0 for m in metrics)
        # vLLM's logprobs are the learner's on the same weights (k3 KL ~0 before any update) ...
        assert metrics[0]["learner/staleness_max"] == 0 and metrics[0]["learner/mismatch_kl"] < 1e-6
        # ... and later batches were sampled with weights the learner published after its updates.
        last = metrics[-1]
        assert last["learner/version"] - last["learner/staleness_max"] >= 1
        assert all(m["learner/mismatch_kl"] < 0.05 for m in metrics)
    finally:
        algo.stop()


def test_the_shipped_vllm_config_validates() -> None:
    from actorlearner.config import AlgorithmConfig

    config = AlgorithmConfig.from_yaml("configs/calculator_vllm.yaml").validate()
    assert config.env_runners.engine == "vllm" and config.env_runners.num_env_runners == 2
    assert config.learners.num_learners == 2
