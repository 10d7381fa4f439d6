"""Shared-prefix passes: the plan shares only loss-free columns, and logits and gradients are unchanged."""

from __future__ import annotations

import gymnasium
import pytest
import torch
from transformers import AutoModelForCausalLM

import actorlearner  # noqa: F401  (registers the built-in envs)
from actorlearner.env.registration import make_env
from actorlearner.learn.prefix import dropout_active, plan_prefix, prefix_logits, supports_prefix
from actorlearner.models.tiny import ensure_tiny_model, env_corpus
from tests.conftest import SMALL_MODEL

SPEC = gymnasium.spec("actorlearner/Calculator-v0")


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    path = ensure_tiny_model(env_corpus(lambda: make_env(SPEC, {})), **SMALL_MODEL)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _rows(
    prompts: list[list[int]], owners: list[int], lengths: list[int], loss_from: int
) -> tuple[torch.Tensor, ...]:
    """Right-padded rows: prompt ``owners[i]``, then distinct ids up to ``lengths[i]``; loss from a column."""
    width = max(lengths)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 30, (len(owners), width), generator=gen)
    attention = torch.zeros_like(ids)
    mask = torch.zeros(ids.shape, dtype=torch.float32)
    for i, (owner, n) in enumerate(zip(owners, lengths, strict=True)):
        ids[i, : len(prompts[owner])] = torch.tensor(prompts[owner])
        ids[i, n:] = 1
        attention[i, :n] = 1
        mask[i, loss_from : n - 1] = 1
    return ids, attention, mask


def test_the_plan_shares_each_groups_prompt_up_to_the_first_loss_column() -> None:
    prompts = [[7, 8, 9, 10, 11, 12], [7, 8, 9, 20, 21, 22]]
    ids, attention, mask = _rows(prompts, [0, 0, 0, 1, 1, 1], [14, 12, 16, 13, 16, 15], loss_from=5)
    plan = plan_prefix(ids, mask, attention)
    assert plan is not None
    assert plan.length == 5  # column 5 predicts the first loss token; it must be computed per row
    assert plan.prefixes.tolist() == [p[:5] for p in prompts]
    assert plan.inverse.tolist() == [0, 0, 0, 1, 1, 1]


def test_the_plan_falls_back_to_the_prefix_all_rows_share() -> None:
    prompts = [[7, 8, 9, 10 + i, 11, 12] for i in range(6)]  # distinct prompts, a 3-id common head
    ids, attention, mask = _rows(prompts, list(range(6)), [20] * 6, loss_from=5)
    plan = plan_prefix(ids, mask, attention)
    assert plan is not None
    assert plan.length == 3
    assert plan.prefixes.tolist() == [[7, 8, 9]]


@pytest.mark.parametrize("loss_from", [0, 1])
def test_no_plan_when_sharing_would_reach_a_loss_column_or_save_too_little(loss_from: int) -> None:
    ids, attention, mask = _rows([[7, 8, 9, 10, 11, 12]], [0] * 4, [14] * 4, loss_from=loss_from)
    assert plan_prefix(ids, mask, attention) is None


def test_a_row_without_loss_tokens_still_limits_the_prefix_to_its_length() -> None:
    prompts = [[7, 8, 9, 10, 11, 12, 13, 14]]
    ids, attention, mask = _rows(prompts, [0, 0, 0], [20, 20, 4], loss_from=7)
    mask[2] = 0
    plan = plan_prefix(ids, mask, attention)
    assert plan is not None and plan.length == 3  # row 2 has 4 ids: its last real column stays per row


@pytest.mark.parametrize("lengths", [[18] * 6, [18, 11, 16, 18, 9, 14]], ids=["unpadded", "padded"])
def test_prefix_logits_and_gradients_equal_one_pass_per_row(
    model: torch.nn.Module, lengths: list[int]
) -> None:
    prompts = [[4, 5, 6, 7, 8, 9, 10], [4, 5, 6, 11, 12, 13, 14]]
    ids, attention, mask = _rows(prompts, [0, 1, 0, 1, 1, 0], lengths, loss_from=6)
    plan = plan_prefix(ids, mask, attention)
    assert plan is not None and plan.length == 6 and plan.prefixes.shape[0] == 2
    results = []
    for p in (None, plan):
        model.zero_grad()
        logits = prefix_logits(model, ids, attention, p)
        start = p.length if p else 0
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, start + 1 :, None])[..., 0]
        loss = (logp * mask[:, start:-1]).sum()
        loss.backward()
        grads = torch.cat([q.grad.flatten() for q in model.parameters()])
        results.append((logits[:, 6 - start :].detach(), loss.detach(), grads))
    (full_logits, full_loss, full_grad), (shared_logits, shared_loss, shared_grad) = results
    real = attention[:, 6:].bool()
    torch.testing.assert_close(shared_logits[real], full_logits[real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shared_loss, full_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shared_grad, full_grad, rtol=1e-4, atol=1e-5)
    assert float(full_grad.abs().max()) > 1e-3


def _qwen2(**config: object) -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    base = {"vocab_size": 40, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
    return Qwen2ForCausalLM(
        Qwen2Config(**{**base, "num_attention_heads": 2, "num_key_value_heads": 1, **config})
    )


def test_models_whose_cache_drops_positions_or_that_draw_dropout_share_nothing() -> None:
    sliding = _qwen2(use_sliding_window=True, sliding_window=4, max_window_layers=1)
    assert not supports_prefix(sliding)  # a sliding-window layer keeps only the last keys
    assert supports_prefix(_qwen2())
    dropout = _qwen2(attention_dropout=0.1)
    assert dropout_active(dropout.train()) and not dropout_active(dropout.eval())
    assert not dropout_active(_qwen2().train())


def test_the_learner_runs_a_sliding_window_model_one_pass_per_row(tmp_path) -> None:
    from actorlearner.learn.config import LearnerConfig, TrainingConfig
    from actorlearner.learn.learner import Batch, Learner

    model = _qwen2(use_sliding_window=True, sliding_window=4, max_window_layers=1, pad_token_id=1)
    model.save_pretrained(tmp_path)
    learner = Learner(str(tmp_path), TrainingConfig(), LearnerConfig(device="cpu"))
    ids, attention, mask = _rows([[7, 8, 9, 10, 11, 12, 13, 14]], [0] * 4, [16, 14, 16, 12], loss_from=8)
    n, width = ids.shape
    batch = Batch(
        input_ids=ids, attention_mask=attention, targets=ids.roll(-1, 1), mask=mask,
        old_logprobs=torch.zeros(n, width), advantages=torch.ones(n, width),
        is_weights=torch.ones(n, width), post_tool=torch.zeros(n, width),
    )  # fmt: skip
    assert plan_prefix(ids, mask, attention) is not None  # a plan exists, but the learner must not use it
    assert learner._plan(batch) is None
    logp, _ = learner._logprobs(learner.model, batch, plan=learner._plan(batch))
    assert logp.shape == (n, width)
