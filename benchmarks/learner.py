"""The learner's update against a bare PyTorch loop on the same batch, side by side.

Three arms train the same model (the embedded 1.0M-parameter default, a fresh copy per arm) on the
same batch of groups shaped like the main job's: 32 groups of 8 trajectories, each group sharing
a 29-id prompt, responses of 4 to 36 ids. Each step is one optimizer step on the whole batch in
micro-batches of 32 rows:

* **bare**: a hand-written loop over length-sorted micro-batches: forward, token log-probs, the
  clipped PPO loss with token-mean aggregation, backward, gradient clipping, AdamW;
* **learner, one pass per row**: ``Learner.update`` with ``training.shared_prefix=false``;
* **learner**: ``Learner.update`` as shipped (a prompt shared by a group's rows runs once).

The arms alternate for ``--rounds`` rounds of ``--steps`` steps. Reported: seconds per update
(median), tokens per second (real ids of the batch per second) and the ratio to the bare loop.
Run: ``.venv/bin/python benchmarks/learner.py`` (about a minute).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import gymnasium
import numpy as np
import torch

import actorlearner  # noqa: F401  (registers the built-in envs)
from actorlearner.core.trajectory import Group, Trajectory
from actorlearner.env.registration import make_env
from actorlearner.learn.config import LearnerConfig, TrainingConfig
from actorlearner.learn.learner import Learner, group_batch
from actorlearner.models.tiny import ensure_tiny_model, env_corpus

SPEC = gymnasium.spec("actorlearner/Calculator-v0")
PROMPT = 29


def _groups(vocab: int, rng: np.random.Generator) -> list[Group]:
    groups = []
    for g in range(32):
        prompt = rng.integers(4, vocab, PROMPT)
        trajs = []
        for _ in range(8):
            n = PROMPT + int(rng.choice([4, 36]))
            ids = np.concatenate([prompt, rng.integers(4, vocab, n - PROMPT)])
            mask = np.zeros(n, np.int8)
            mask[PROMPT:] = 1
            trajs.append(
                Trajectory(
                    token_ids=ids,
                    loss_mask=mask,
                    logprobs=np.full(n, -2.0, np.float32),
                    turn_index=np.zeros(n, np.int32),
                    post_tool=np.zeros(n, np.int8),
                    prompt_length=PROMPT,
                    policy_versions=[0],
                    reward=float(rng.integers(0, 2)),
                )
            )
        groups.append(Group(group_id=str(g), prompt_id=str(g), trajectories=trajs))
    return groups


def _bare_step(learner: Learner, groups: list[Group], micro: int) -> None:
    """The hand-written loop, on the learner's model and a fresh AdamW of its own."""
    model = learner.model
    opt = getattr(learner, "_bare_opt", None) or torch.optim.AdamW(model.parameters(), lr=2e-4)
    learner._bare_opt = opt  # type: ignore[attr-defined]
    batch = group_batch(groups).sorted_by_length()
    total = batch.mask.sum()
    opt.zero_grad(set_to_none=True)
    rows = batch.input_ids.shape[0]
    for lo in range(0, rows, micro):
        mb = batch.slice(lo, min(lo + micro, rows))
        logits = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits
        logp = torch.log_softmax(logits.float(), -1).gather(-1, mb.targets[..., None])[..., 0]
        ratio = torch.exp(logp - mb.old_logprobs)
        clipped = torch.min(ratio * mb.advantages, ratio.clamp(0.8, 1.2) * mb.advantages)
        (-(clipped * mb.mask).sum() / total).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def main() -> None:
    """Runs the three arms alternately and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the learner's share)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model_dir = str(ensure_tiny_model(env_corpus(lambda: make_env(SPEC, {"max_operand": 99}))))

    def learner(shared: bool) -> Learner:
        cfg = TrainingConfig(shared_prefix=shared, micro_batch_size=32)
        built = Learner(model_dir, cfg, LearnerConfig(device="cpu", num_threads=args.threads), max_tokens=160)
        built.start_rl()
        return built

    learners = {"bare": learner(False), "learner, one pass per row": learner(False), "learner": learner(True)}
    groups = _groups(int(learners["bare"].model.config.vocab_size), np.random.default_rng(0))
    tokens = float(group_batch(groups).attention_mask.sum())
    steps: dict[str, Callable[[], object]] = {
        "bare": lambda: _bare_step(learners["bare"], groups, 32),
        "learner, one pass per row": lambda: learners["learner, one pass per row"].update(groups),
        "learner": lambda: learners["learner"].update(groups),
    }
    times: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():  # warm-up
        step()
    for _ in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - start) / args.steps)
    bare = statistics.median(times["bare"])
    print(f"256 trajectories, {tokens:.0f} ids per update, {args.threads} thread(s), {args.rounds} rounds")
    print(f"{'arm':<28}{'s/update':>10}{'tokens/s':>10}{'vs bare':>9}")
    for name, values in times.items():
        t = statistics.median(values)
        print(f"{name:<28}{t:>10.2f}{tokens / t:>10.0f}{bare / t:>8.2f}x")
    seconds = {name: statistics.median(values) for name, values in times.items()}
    ratio = bare / seconds["learner"]
    print(json.dumps({"args": vars(args), "tokens": tokens, "s_per_update": seconds, "ratio": ratio}))


if __name__ == "__main__":
    main()
