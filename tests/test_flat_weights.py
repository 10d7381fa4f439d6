"""The learner's parameters in one flat tensor, published as one buffer (PackedWeights)."""

from __future__ import annotations

import copy
import pickle

import gymnasium
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import actorlearner  # noqa: F401  (registers the built-in envs)
from actorlearner.core.protocols import SamplingParams
from actorlearner.core.weights import PackedWeights
from actorlearner.env.registration import make_env
from actorlearner.learn.config import LearnerConfig, TrainingConfig
from actorlearner.learn.flat import flatten_parameters, pack_state
from actorlearner.learn.learner import Learner
from actorlearner.models.tiny import ensure_tiny_model, env_corpus
from actorlearner.rollout.engine import HFEngine
from tests.conftest import SMALL_MODEL

SPEC = gymnasium.spec("actorlearner/Calculator-v0")


@pytest.fixture(scope="module")
def model_dir() -> str:
    return str(ensure_tiny_model(env_corpus(lambda: make_env(SPEC, {})), **SMALL_MODEL))


def _model(model_dir: str) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def _ids() -> torch.Tensor:
    return torch.arange(3, 19).reshape(2, 8)


def _views_of(flat: torch.Tensor, model: torch.nn.Module) -> bool:
    base = flat.untyped_storage().data_ptr()
    return all(p.untyped_storage().data_ptr() == base for p in model.parameters())


def test_flattening_keeps_the_model_and_stores_each_parameter_once(model_dir) -> None:
    model = _model(model_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        logits = model(_ids()).logits
    names = {id(p): n for n, p in model.named_parameters()}
    flat = flatten_parameters(model)
    assert flat is not None and _views_of(flat, model)
    assert {id(p): n for n, p in model.named_parameters()} == names  # same Parameter objects
    assert flat.numel() == sum(p.numel() for p in model.parameters())  # tied: once
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model(_ids()).logits, logits)


def test_an_optimizer_step_updates_the_buffer_and_packing_matches_the_state_dict(model_dir) -> None:
    model = _model(model_dir)
    flat = flatten_parameters(model)
    assert flat is not None
    snapshot = flat.clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(_ids(), labels=_ids()).loss.backward()
    optimizer.step()
    assert _views_of(flat, model) and not torch.equal(flat, snapshot)  # the step wrote into the buffer
    packed = pack_state(model.state_dict(), flat, copy=True)
    state = model.state_dict()
    assert set(packed) == set(state) and not packed.extra
    assert all(np.array_equal(packed[k], v.numpy()) for k, v in state.items())
    assert packed.nbytes == flat.numel() * 4  # the tied head is not sent twice
    packed["model.norm.weight"][:] = 7.0  # a copy: the model is untouched
    assert not torch.all(model.get_parameter("model.norm.weight") == 7.0)


def test_a_parameter_moved_out_of_the_buffer_is_published_as_an_extra_array(model_dir) -> None:
    model = _model(model_dir)
    flat = flatten_parameters(model)
    assert flat is not None
    norm = model.get_parameter("model.norm.weight")
    norm.data = norm.data.clone() + 1.0  # e.g. what sharding or a wrapper would do
    model.register_buffer("extra_scale", torch.full((3,), 2.0))
    packed = pack_state(model.state_dict(), flat, copy=False)
    assert set(packed.extra) == {"model.norm.weight", "extra_scale"}
    assert np.array_equal(packed["model.norm.weight"], norm.detach().numpy())
    assert np.array_equal(packed["extra_scale"], np.full(3, 2.0, dtype=np.float32))
    assert set(packed) == set(model.state_dict())


def test_mixed_dtypes_are_left_alone(model_dir) -> None:
    model = _model(model_dir)
    model.get_parameter("model.norm.weight").data = model.get_parameter("model.norm.weight").data.double()
    pointers = [p.data_ptr() for p in model.parameters()]
    assert flatten_parameters(model) is None
    assert [p.data_ptr() for p in model.parameters()] == pointers


def test_packed_weights_pickle_as_one_out_of_band_buffer_and_check_their_layout() -> None:
    flat = np.arange(10, dtype=np.float32)
    packed = PackedWeights(flat, (("a", 0, (2, 3)), ("b", 6, (4,)), ("tied", 0, (2, 3))), {"c": np.ones(2)})
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(packed, protocol=5, buffer_callback=buffers.append)
    assert len(buffers) == 2  # the buffer and the one extra array, nothing per entry
    back = pickle.loads(data, buffers=buffers)
    assert list(back) == ["a", "b", "tied", "c"] and len(back) == 4
    assert np.array_equal(back["a"], [[0, 1, 2], [3, 4, 5]]) and np.array_equal(back["b"], [6, 7, 8, 9])
    assert np.shares_memory(back["a"], back["tied"])
    with pytest.raises(ValueError, match="'b' at 7"):
        PackedWeights(flat, (("b", 7, (4,)),))
    with pytest.raises(ValueError, match="twice"):
        PackedWeights(flat, (("a", 0, (2,)),), {"a": np.ones(1)})
    with pytest.raises(ValueError, match="1-D"):
        PackedWeights(flat.reshape(2, 5), ())


def test_the_learner_publishes_one_buffer_that_an_engine_loads(model_dir) -> None:
    learner = Learner(model_dir, TrainingConfig(lr=1e-3), LearnerConfig(device="cpu"), seed=0)
    weights = learner.get_weights()
    assert isinstance(weights, PackedWeights) and not weights.extra
    assert set(weights) == set(learner.model.state_dict())
    engine = HFEngine(model_dir, seed=0)
    with torch.no_grad():
        for p in engine.model.parameters():
            p.add_(0.5)  # so that only a real load can give the learner's outputs back
    engine.load_weights(weights, version=3)
    assert engine.version == 3
    params = SamplingParams(0.0, 6, ())
    reference = HFEngine(model_dir, seed=0)
    prompt = [[3, 4, 5, 6]]
    assert engine.generate(prompt, params)[0].token_ids == reference.generate(prompt, params)[0].token_ids
    reference.load_weights(dict(weights), version=3)  # the same weights as a plain dict
    same = engine.generate(prompt, params)[0].logprobs, reference.generate(prompt, params)[0].logprobs
    assert np.allclose(*same)


def test_a_deep_copy_for_the_kl_reference_owns_its_parameters(model_dir) -> None:
    model = _model(model_dir)
    flat = flatten_parameters(model)
    assert flat is not None
    ref = copy.deepcopy(model)
    with torch.no_grad():
        flat.add_(1.0)
    assert not any(torch.equal(a, b) for a, b in zip(ref.parameters(), model.parameters(), strict=True))


def test_parameters_sharing_memory_through_data_are_left_alone() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    model[1].weight.data = model[0].weight.data  # tied by memory, not by being one parameter
    assert flatten_parameters(model) is None
    assert model[1].weight.data_ptr() == model[0].weight.data_ptr()


def test_a_learner_whose_parameters_left_the_buffer_publishes_them_as_arrays(model_dir, caplog) -> None:
    learner = Learner(model_dir, TrainingConfig(lr=1e-3), LearnerConfig(device="cpu"), seed=0)
    for p in learner.model.parameters():
        p.data = p.data.clone()  # e.g. a resize: nothing is in the buffer any more
    weights = learner.get_weights()
    assert not isinstance(weights, PackedWeights) and learner._flat is None
    assert "moved out of the flat buffer" in caplog.text
    state = learner.model.state_dict()
    assert all(np.array_equal(weights[k], v.numpy()) for k, v in state.items())


def test_a_flat_learner_exports_a_model_that_loads_back_equal(model_dir, tmp_path) -> None:
    learner = Learner(model_dir, TrainingConfig(lr=1e-3), LearnerConfig(device="cpu"), seed=0)
    with torch.no_grad():
        learner._flat.add_(0.25)  # not the weights on disk
    learner.save_pretrained(str(tmp_path))
    back = _model(str(tmp_path))
    state = learner.model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in back.state_dict().items())
    assert back.get_output_embeddings().weight.data_ptr() == back.get_input_embeddings().weight.data_ptr()
