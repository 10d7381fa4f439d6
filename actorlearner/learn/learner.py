"""The learner: GRPO-family updates on groups, cold-start SFT, versioned weights.

The same class runs in-process (local mode) or as a Ray actor (GPU when present, CPU otherwise).
"""

from __future__ import annotations

import copy
import logging
import math
import time
import types
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.utils import logging as hf_logging

from actorlearner.core.errors import CheckpointError
from actorlearner.core.trajectory import Group, Trajectory
from actorlearner.learn import distributed, flat, lora, losses, sharding
from actorlearner.learn.config import LearnerConfig, TrainingConfig
from actorlearner.learn.prefix import PrefixPlan, dropout_active, plan_prefix, prefix_logits, supports_prefix
from actorlearner.learn.registry import (
    ADVANTAGE_ESTIMATORS,
    KL_ESTIMATORS,
    LOSS_AGGREGATIONS,
    POLICY_LOSSES,
    AdvantageEstimator,
    KLEstimator,
    LossAggregation,
    PolicyLoss,
)

logger = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class Batch:
    """Trajectories collated to right-padded ``[batch, time]`` tensors (targets shifted by one).

    Attributes:
        input_ids: Ids fed to the model.
        attention_mask: 1 on real ids.
        targets: ``input_ids`` shifted left: the id each position predicts.
        mask: Loss weight of each target (the trajectory's loss_mask, shifted).
        old_logprobs: Behaviour log-probs of each target.
        advantages: Per-token advantages.
        is_weights: Per-token importance-sampling weights from the buffer.
        post_tool: 1 on targets in a turn that follows a tool result.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    old_logprobs: torch.Tensor
    advantages: torch.Tensor
    is_weights: torch.Tensor
    post_tool: torch.Tensor

    def to(self, device: torch.device) -> Batch:
        """Moves every tensor to ``device``."""
        return Batch(**{k: v.to(device) for k, v in vars(self).items()})

    def sorted_by_length(self) -> Batch:
        """Rows reordered by length, so micro-batches carry little padding."""
        order = torch.argsort(self.attention_mask.sum(-1), stable=True)
        return Batch(**{k: v[order] for k, v in vars(self).items()})

    def tail(self, start: int) -> Batch:
        """Columns ``start:`` of every tensor but ``attention_mask``, which the model needs whole."""
        if start == 0:
            return self
        cols = {k: v if k == "attention_mask" else v[:, start:] for k, v in vars(self).items()}
        return Batch(**cols)

    def rows(self, index: torch.Tensor) -> Batch:
        """The rows at ``index`` (a learner's share of the batch), full width."""
        return Batch(**{k: v[index] for k, v in vars(self).items()})

    def weightless(self) -> Batch:
        """The same rows with no loss weight (a sharded member's filler micro-batch)."""
        return Batch(**{k: torch.zeros_like(v) if k == "mask" else v for k, v in vars(self).items()})

    def slice(self, start: int, stop: int) -> Batch:
        """Rows ``start:stop``, trimmed to their longest sequence."""
        rows = {k: v[start:stop] for k, v in vars(self).items()}
        width = int(rows["attention_mask"].sum(-1).max().item())
        return Batch(**{k: v[:, :width] for k, v in rows.items()})


def collate(
    trajectories: Sequence[Trajectory],
    advantages: Sequence[float] | None = None,
    is_weights: Sequence[float] | None = None,
    pad_id: int = 0,
) -> Batch:
    """Builds a :class:`Batch` from trajectories, using exactly their token ids.

    Args:
        trajectories: The episodes.
        advantages: One advantage per trajectory (0 when None, e.g. for SFT).
        is_weights: One IS weight per trajectory (1 when None).
        pad_id: Id used for padding (masked out everywhere).
    """
    n = len(trajectories)
    width = max(t.length for t in trajectories)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    attn = torch.zeros((n, width), dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.float32)
    old = torch.zeros((n, width), dtype=torch.float32)
    post = torch.zeros((n, width), dtype=torch.float32)
    for i, t in enumerate(trajectories):
        ids[i, : t.length] = torch.from_numpy(t.token_ids.astype(np.int64))
        attn[i, : t.length] = 1
        mask[i, : t.length] = torch.from_numpy(t.loss_mask.astype(np.float32))
        old[i, : t.length] = torch.from_numpy(t.logprobs.astype(np.float32))
        post[i, : t.length] = torch.from_numpy(t.post_tool.astype(np.float32))
    adv = torch.tensor(advantages if advantages is not None else [0.0] * n, dtype=torch.float32)
    isw = torch.tensor(is_weights if is_weights is not None else [1.0] * n, dtype=torch.float32)
    return Batch(
        input_ids=ids[:, :-1],
        attention_mask=attn[:, :-1],
        targets=ids[:, 1:],
        mask=mask[:, 1:],
        old_logprobs=old[:, 1:],
        advantages=adv[:, None].expand(n, width - 1).clone(),
        is_weights=isw[:, None].expand(n, width - 1).clone(),
        post_tool=post[:, 1:],
    )


def group_batch(groups: Sequence[Group], estimator: losses.Spec = "grpo", pad_id: int = 0) -> Batch:
    """Collates groups with advantages computed within each group.

    Args:
        groups: The groups.
        estimator: An advantage estimator (a registered name, a path or the function).
        pad_id: Id used for padding.
    """
    estimator = ADVANTAGE_ESTIMATORS.resolve(estimator)
    trajs: list[Trajectory] = []
    advs: list[float] = []
    weights: list[float] = []
    for g in groups:
        trajs.extend(g.trajectories)
        advs.extend(losses.group_advantages(g.rewards, estimator).tolist())
        weights.extend([g.is_weight] * len(g.trajectories))
    return collate(trajs, advs, weights, pad_id)


class Learner:
    """Owns the policy being trained and its optimizer.

    Args:
        model_path: Directory to load the policy from (``from_pretrained``).
        training: The RL-phase config; its advantage, policy_loss, kl_estimator and
            loss_aggregation are looked up in :mod:`actorlearner.learn.registry` once, here.
        learner: Device and threads.
        temperature: Sampling temperature of the rollouts (log-probs are computed at it).
        seed: Seeds torch.
        max_tokens: Episode token cap: the constant Dr. GRPO divides token sums by.
        publish_views: :meth:`get_weights` returns views of the live parameters, not copies: only
            for a learner that is a Ray actor, whose return values Ray serializes at once.
    """

    def __init__(
        self,
        model_path: str,
        training: TrainingConfig,
        learner: LearnerConfig,
        temperature: float = 1.0,
        seed: int = 0,
        max_tokens: int | None = None,
        publish_views: bool = False,
    ) -> None:
        hf_logging.disable_progress_bar()
        self.publish_views = publish_views
        self.max_tokens = max_tokens
        self.sharding = learner.sharding
        torch.manual_seed(seed)
        self.seed = seed
        self.demos: list[Trajectory] = []
        self.sft_optimizer: torch.optim.AdamW | None = None
        self.sft_rng = np.random.default_rng(seed)
        if learner.num_threads:
            torch.set_num_threads(learner.num_threads)
        self.cfg = training
        self._resolve_math(training)
        self.temperature = temperature
        self.device = resolve_device(learner.device)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        self.model: PreTrainedModel = model.to(self.device)  # type: ignore[arg-type]
        self.model.train()
        self.pad_id = int(self.model.config.pad_token_id or 0)
        self._prefix_ok = supports_prefix(self.model)
        if learner.gradient_checkpointing:  # a cached prefix needs use_cache, which checkpointing turns off
            _enable_checkpointing(self.model)
            self._prefix_ok = False
        self._autocast = learner.autocast == "bf16"
        if self._autocast:
            _head_in_float32(self.model)
        self._flat: torch.Tensor | None = None  # the parameters' one buffer (published as one)
        if learner.lora_rank:  # after the knobs above, which act on the base model's layers
            rank, alpha, targets = learner.lora_rank, learner.lora_alpha, learner.lora_target_modules
            self.model = lora.add_lora(self.model, rank, alpha, targets)  # type: ignore[assignment]
        else:
            self._flat = flat.flatten_parameters(self.model)
        self.optimizer = self._make_optimizer(training.lr)
        self.ref_model: torch.nn.Module | None = None
        self.version = 0
        self.rank, self.world_size = 0, 1  # a learner group's member after join_group

    def _resolve_math(self, training: TrainingConfig) -> None:
        """Looks up the registered advantage estimator, policy loss, KL estimator and aggregation."""
        self.advantage_fn: AdvantageEstimator = ADVANTAGE_ESTIMATORS.resolve(training.advantage)
        self.policy_loss_fn: PolicyLoss = POLICY_LOSSES.resolve(training.policy_loss)
        self.kl_fn: KLEstimator = KL_ESTIMATORS.resolve(training.kl_estimator)
        self.aggregate_fn: LossAggregation = LOSS_AGGREGATIONS.resolve(training.loss_aggregation)

    def _make_optimizer(self, lr: float) -> torch.optim.AdamW:
        trainable = [p for p in self.model.parameters() if p.requires_grad]  # LoRA: the adapters
        cfg = self.cfg
        return torch.optim.AdamW(trainable, lr=lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay)

    def start_rl(self, reset_optimizer: bool = True) -> None:
        """Starts the RL phase: a fresh optimizer (unless resuming), the reference model if KL is on.

        Dropout is switched off for RL updates, so that the ratio pi_theta / pi_old is not noise.
        """
        self.model.eval()
        for module in self.model.modules():  # transformers checkpoints only layers in training mode:
            if getattr(module, "gradient_checkpointing", False):  # the layers themselves (no dropout of
                module.training = True  # their own) stay in it; their dropout submodules do not
        if reset_optimizer:
            self.optimizer = self._make_optimizer(self.cfg.lr)
        if self.cfg.kl_beta > 0 and self.ref_model is None:  # a restored reference is kept
            self.ref_model = self._frozen_copy()

    def _frozen_copy(self) -> torch.nn.Module:
        """A copy of the policy for the KL reference: eval mode, no gradients."""
        return copy.deepcopy(self.model).eval().requires_grad_(False)

    def _plan(self, mb: Batch) -> PrefixPlan | None:
        """The micro-batch's shared prefix (None when off or when sharing saves too little)."""
        if not (self.cfg.shared_prefix and self._prefix_ok) or dropout_active(self.model):
            return None
        return plan_prefix(mb.input_ids, mb.mask, mb.attention_mask)

    def _logits(self, model: torch.nn.Module, mb: Batch, plan: PrefixPlan | None) -> torch.Tensor:
        """The forward pass (:func:`prefix_logits`), in bfloat16 autocast with ``learners.autocast``.

        Under autocast the backbone runs in bfloat16 and the output head in float32
        (:func:`_head_in_float32`), so the logits, logprobs and loss are float32 computed from
        bfloat16-rounded hidden states.
        """
        if not self._autocast:
            return prefix_logits(model, mb.input_ids, mb.attention_mask, plan)
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            return prefix_logits(model, mb.input_ids, mb.attention_mask, plan)

    def _logprobs(
        self, model: torch.nn.Module, mb: Batch, entropy_grad: bool = False, plan: PrefixPlan | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs and entropies of the targets from column ``plan.length`` on (all without a plan)."""
        logits = self._logits(model, mb, plan)
        logp = losses.token_logprobs(logits, mb.tail(plan.length if plan else 0).targets, self.temperature)
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            dist = torch.log_softmax(logits.float() / self.temperature, dim=-1)
            entropy = -(dist.exp() * dist).sum(-1)
        return logp, entropy

    def update(self, groups: Sequence[Group]) -> dict[str, float]:
        """One optimizer step of the GRPO-family loss on ``groups``; bumps the version.

        Returns:
            Learner metrics (loss, grad norm, clip fraction, mismatch KL, entropy, tokens/s...).
        """
        if not groups:
            return {"skipped": 1.0, "version": float(self.version)}
        start = time.perf_counter()
        batch = group_batch(groups, self.advantage_fn, self.pad_id).sorted_by_length().to(self.device)
        total_tokens = float(batch.mask.sum().item())
        n_rows = batch.input_ids.shape[0]
        max_len = self.max_tokens or batch.input_ids.shape[1]  # Dr. GRPO's constant
        share = self._share(batch)
        keys = (
            "loss",
            "clip_frac",
            "mismatch_kl",
            "entropy",
            "kl",
            "entropy_advantage_change",
            "behaviour_weight",
            "behaviour_dropped",
        )
        sums: dict[str, float] = dict.fromkeys(keys, 0.0)
        self.optimizer.zero_grad(set_to_none=True)
        for mb in self._micro_batches(batch, share):
            loss, stats = self._micro_loss(mb, n_rows, total_tokens, max_len)
            (loss * self._grad_scale()).backward()
            for key, value in stats.items():
                sums[key] += value
        sums = self._reduce(sums)
        grad_norm = sharding.full_value(
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        )
        self.optimizer.step()
        self.version += 1
        elapsed = time.perf_counter() - start
        staleness = [self.version - 1 - t.min_version for g in groups for t in g.trajectories]
        adv = batch.advantages[batch.mask > 0]
        useful = ((batch.mask > 0) & (batch.advantages != 0)).any(dim=1)
        metrics = {k: v / max(total_tokens, 1.0) for k, v in sums.items() if k != "loss"}
        metrics.update(
            loss=sums["loss"],
            grad_norm=float(grad_norm),
            tokens=total_tokens,
            tokens_per_s=float(batch.attention_mask.sum().item()) / elapsed,
            update_time_s=elapsed,
            advantage_abs_mean=float(adv.abs().mean().item()) if adv.numel() else 0.0,
            trajectories=float(n_rows),
            useful_trajectories=float(useful.sum().item()),
            staleness_mean=float(np.mean(staleness)) if staleness else 0.0,
            staleness_max=float(max(staleness, default=0)),
            version=float(self.version),
            param_bytes=float(sharding.local_bytes(self.model)),
        )
        return metrics

    def _share(self, batch: Batch) -> Batch:
        """This learner's rows of a length-sorted batch (all of it outside a learner group)."""
        if self.world_size == 1:
            return batch
        return batch.rows(distributed.shard_rows(batch.input_ids.shape[0], self.rank, self.world_size))

    def _micro_batches(self, batch: Batch, share: Batch) -> Iterator[Batch]:
        """This learner's micro-batches of ``share``, its rows of the length-sorted ``batch``.

        Sharded (:mod:`~actorlearner.learn.sharding`), every pass is a collective: each member runs
        as many micro-batches as the member with the most rows, filling up with weightless copies
        of the batch's first row. Each backward pass reduce-scatters its gradients into the shards,
        so no member ever holds the whole gradient.
        """
        size, rows = self.cfg.micro_batch_size, share.input_ids.shape[0]
        most = -(-batch.input_ids.shape[0] // self.world_size) if self._sharded() else rows
        count = -(-most // size)
        for i in range(count):
            lo = i * size
            yield share.slice(lo, min(lo + size, rows)) if lo < rows else batch.slice(0, 1).weightless()

    def _sharded(self) -> bool:
        return sharding.is_sharded(self.model)

    def _grad_scale(self) -> float:
        """FSDP2 averages the members' gradients; the losses are shares of one sum (see sharding)."""
        return float(self.world_size) if self._sharded() else 1.0

    def _reduce(self, sums: dict[str, float]) -> dict[str, float]:
        """In a learner group: sums the gradients and ``sums`` over the group (identity otherwise).

        Sharded, the gradients were already reduce-scattered by the last backward pass.
        """
        if self.world_size == 1:
            return sums
        if not self._sharded():
            distributed.all_reduce_grads(self.model.parameters())
        return distributed.all_reduce_sums(sums, self.device)

    def rendezvous_address(self) -> str:
        """``ip:port`` on this learner's node where a learner group can form (rank 0 gives it)."""
        return distributed.node_address()

    def join_group(self, address: str, rank: int, world_size: int, backend: str, timeout_s: float) -> int:
        """Joins a data-parallel learner group (torch.distributed); returns ``rank``.

        Every member collates the whole batch and trains on its share of the rows; gradients and
        metrics are summed over the group before the (identical) optimizer steps, so the weights
        of all members stay equal (:mod:`actorlearner.learn.distributed`). With
        ``learners.sharding: fsdp2`` the model is then sharded over the members and the optimizer
        rebuilt over the shards (:mod:`actorlearner.learn.sharding`). Blocks until all
        ``world_size`` members have joined, at most ``timeout_s``.
        """
        distributed.join(address, rank, world_size, distributed.backend_for(self.device, backend), timeout_s)
        self.rank, self.world_size = rank, world_size
        torch.manual_seed(self.seed + rank)  # dropout masks differ between members' rows
        if self.sharding == "fsdp2" and not self._sharded():
            sharding.shard(self.model)
            self._flat = None  # the parameters are shards now: the full buffer would only hold memory
            self._prefix_ok = False  # one forward per micro-batch on every member (collectives)
            self.optimizer = self._make_optimizer(self.cfg.lr)  # over the shards
        return rank

    def _micro_loss(
        self, mb: Batch, n_rows: int, total_tokens: float, max_len: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        shaping = cfg.entropy_advantage_coef > 0
        plan = self._plan(mb)
        logp, entropy = self._logprobs(
            self.model, mb, entropy_grad=shaping and not cfg.entropy_advantage_detach, plan=plan
        )
        full, mb = mb, mb.tail(plan.length if plan else 0)  # the shared columns carry no loss
        advantages, adv_change = mb.advantages, torch.zeros(())
        if shaping:
            advantages, adv_change = losses.entropy_guided_advantages(
                mb.advantages,
                entropy,
                mb.post_tool,
                mb.mask,
                cfg.entropy_advantage_coef,
                cfg.entropy_advantage_detach,
                cfg.entropy_advantage_scope,
            )
        # With a correction, the ratio's denominator is the learner's own policy before this update
        # (the proximal policy: one step per batch) and the engine's enters only through the weights.
        behaviour = losses.off_policy_weights(logp, mb.old_logprobs, cfg.off_policy_correction, cfg.is_cap)
        old = mb.old_logprobs if cfg.off_policy_correction == "none" else logp.detach()
        per_token, clipped = self.policy_loss_fn(logp, old, advantages, mb.mask, cfg)
        per_token = per_token * mb.is_weights * behaviour
        kl_sum = 0.0
        if self.ref_model is not None:
            with torch.no_grad():
                ref_logp, _ = self._logprobs(self.ref_model, full, plan=plan)
            kl = losses.kl_penalty(logp, ref_logp, self.kl_fn)
            per_token = per_token + cfg.kl_beta * kl
            kl_sum = float((kl.detach() * mb.mask).sum().item())
        # Each micro-batch's share: the sum over micro-batches equals the full-batch loss.
        loss = self.aggregate_fn(
            per_token, mb.mask, max_len=max_len, total_tokens=total_tokens, total_rows=n_rows
        )
        with torch.no_grad():
            mismatch = losses.kl_penalty(mb.old_logprobs, logp.detach(), losses.kl_k3)
        stats = {
            "loss": float(loss.item()),
            "clip_frac": float((clipped * mb.mask).sum().item()),
            "mismatch_kl": float((mismatch * mb.mask).sum().item()),
            "entropy": float((entropy.detach() * mb.mask).sum().item()),
            "kl": kl_sum,
            "entropy_advantage_change": float(adv_change.item()) * float(mb.mask.sum().item()),
            "behaviour_weight": float((behaviour * mb.mask).sum().item()),
            "behaviour_dropped": float(((behaviour == 0) * mb.mask).sum().item()),
        }
        return loss, stats

    def set_demonstrations(self, trajectories: Sequence[Trajectory]) -> int:
        """Stores the demonstration episodes SFT samples from; returns how many."""
        self.demos = list(trajectories)
        self.sft_optimizer = None
        self.sft_rng = np.random.default_rng(self.seed)
        return len(self.demos)

    def sft_steps(
        self,
        start: int,
        num_steps: int,
        total_steps: int,
        batch_size: int,
        lr: float,
        num_threads: int | None = None,
    ) -> list[dict[str, float]]:
        """Supervised fine-tuning on the stored demonstrations: cross-entropy on loss_mask-1 ids.

        Called in chunks so the driver can show progress. The learning rate follows a cosine from
        ``lr`` at step 0 to 0 at ``total_steps``; the version is bumped after the last step.
        ``num_threads`` lets SFT use the cores the (idle) runners reserve; restored afterwards.

        Returns:
            One metrics dict per step (``sft/loss``, ``sft/token_accuracy``, ``sft/lr``).
        """
        self.model.train()
        if self.sft_optimizer is None:
            self.sft_optimizer = self._make_optimizer(lr)
        threads = torch.get_num_threads()
        if num_threads and self.device.type == "cpu":
            torch.set_num_threads(num_threads)
        try:
            return self._sft_steps(start, num_steps, total_steps, batch_size, lr)
        finally:
            torch.set_num_threads(threads)

    def _sft_steps(
        self, start: int, num_steps: int, total_steps: int, batch_size: int, lr: float
    ) -> list[dict[str, float]]:
        assert self.sft_optimizer is not None
        history = []
        for step in range(start, start + num_steps):
            step_lr = lr * 0.5 * (1 + math.cos(math.pi * step / max(total_steps, 1)))
            for group in self.sft_optimizer.param_groups:
                group["lr"] = step_lr
            idx = self.sft_rng.choice(len(self.demos), size=min(batch_size, len(self.demos)), replace=False)
            batch = collate([self.demos[i] for i in idx], pad_id=self.pad_id).sorted_by_length()
            batch = batch.to(self.device)
            self.sft_optimizer.zero_grad(set_to_none=True)
            loss, acc = self._sft_backward(batch)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.sft_optimizer.step()
            history.append({"sft/loss": loss, "sft/token_accuracy": acc, "sft/lr": step_lr})
        if start + num_steps >= total_steps:
            self.version += 1
            self.sft_optimizer = None
        return history

    def _sft_backward(self, batch: Batch) -> tuple[float, float]:
        """Backpropagates the batch's token-mean cross-entropy in length-sorted micro-batches.

        Each micro-batch is trimmed to its longest row and contributes its token sum over the
        whole batch's token count, so the gradient equals one full-batch pass with less padding.
        A prefix the micro-batch's rows share is run once (``training.shared_prefix``).

        Returns:
            The batch's mean cross-entropy and token accuracy on loss tokens.
        """
        total = max(float(batch.mask.sum().item()), 1.0)
        sums = {"loss": 0.0, "correct": 0.0}
        for mb in self._micro_batches(batch, self._share(batch)):
            plan = self._plan(mb)
            logits = self._logits(self.model, mb, plan)
            mb = mb.tail(plan.length if plan else 0)  # the shared columns carry no loss
            nll = torch.nn.functional.cross_entropy(
                logits.float().transpose(1, 2), mb.targets, reduction="none"
            )
            part = (nll * mb.mask).sum()
            (part / total * self._grad_scale()).backward()
            sums["loss"] += float(part.item())
            with torch.no_grad():
                sums["correct"] += float(((logits.argmax(-1) == mb.targets).float() * mb.mask).sum().item())
        sums = self._reduce(sums)
        return sums["loss"] / total, sums["correct"] / total

    def get_weights(self) -> Mapping[str, np.ndarray]:
        """The parameters as numpy arrays, keyed like ``state_dict``, for publication to the runners.

        Numpy, not torch: Ray writes numpy arrays into its object store with one copy and every
        runner on a node reads them there without one (torch tensors are pickled: about 10x slower
        for a 400 MB model, ``benchmarks/weight_sync.py``). The parameters live in one flat tensor
        (:mod:`actorlearner.learn.flat`), published as one buffer
        (:class:`~actorlearner.core.weights.PackedWeights`: half the time again); with LoRA,
        sharding, or parameters of mixed dtypes or devices, a dict of arrays. With
        ``publish_views`` (a learner placed as a Ray actor) they are views of the live parameters,
        which Ray serializes when this method returns, before the learner runs another call;
        otherwise copies, since a runner in this process holds them until it loads them.
        """
        if self._sharded():  # a collective: every member gathers, rank 0 answers
            return {k: flat.to_numpy(v, False) for k, v in sharding.gather_model_state(self.model).items()}
        state = lora.merged_state(self.model)
        if self._flat is not None and not flat.views_of(self.model, self._flat):
            logger.warning("learner: parameters were moved out of the flat buffer; publishing arrays")
            self._flat = None  # something replaced them (e.g. a resize): the buffer only holds memory
        if self._flat is not None:
            return flat.pack_state(state, self._flat, copy=not self.publish_views)
        return {k: flat.to_numpy(v, not self.publish_views) for k, v in state.items()}

    def get_version(self) -> int:
        """The weights version (number of updates so far)."""
        return self.version

    def save_pretrained(self, path: str) -> None:
        """Exports the policy as a model directory ``from_pretrained`` loads (safetensors).

        With LoRA, a copy with the adapters merged in (a plain model, as the runners get it).
        """
        if self._sharded():  # a collective: every member gathers, rank 0 writes
            state = sharding.gather_model_state(self.model)
            if self.rank == 0:
                self.model.save_pretrained(path, state_dict=state)
            return
        model: Any = lora.merged_copy(self.model) if lora.is_lora(self.model) else self.model
        model.save_pretrained(path, state_dict=self._cpu_export() if model is self.model else None)

    def _cpu_export(self) -> dict[str, torch.Tensor] | None:
        """CPU copies of a flat learner's weights (tied ones once), else None (the model's own).

        ``transformers`` clones every parameter sharing one storage before writing, on the
        parameters' device: for a flat learner, a second model in GPU memory at each checkpoint.
        """
        if self._flat is None:
            return None
        copies: dict[int, torch.Tensor] = {}
        out = {}
        for key, value in self.model.state_dict().items():
            if value.data_ptr() not in copies:
                copies[value.data_ptr()] = value.detach().to("cpu", copy=True)
            out[key] = copies[value.data_ptr()]
        return out

    def get_state(self, components: Collection[str] | None = None) -> dict[str, Any]:
        """The version, the optimizer's ``state_dict``, the model and KL reference weights (CPU copies).

        Args:
            components: Only these of ``version``, ``optimizer``, ``model``, ``ref_model`` (default:
                all), so that a checkpoint can skip the weights it exports with
                :meth:`save_pretrained`. ``ref_model`` is None until the RL phase builds the KL
                reference (``kl_beta > 0``).
        """
        parts = set(components or ("version", "optimizer", "model", "ref_model"))
        state: dict[str, Any] = {}
        if "version" in parts:
            state["version"] = self.version
        sharded = self._sharded()  # gathers are collectives: every member runs them, rank 0 answers
        if "optimizer" in parts:
            optimizer = self.optimizer
            gathered = sharded and sharding.gather_optimizer_state(self.model, optimizer)
            state["optimizer"] = gathered if sharded else copy.deepcopy(optimizer.state_dict())
        if "model" in parts:
            state["model"] = sharding.gather_model_state(self.model) if sharded else _cpu_state(self.model)
        if "ref_model" in parts:
            state["ref_model"] = None if self.ref_model is None else _cpu_state(self.ref_model)
        if lora.is_lora(self.model):  # small; the frozen base comes from the model directory
            state["adapters"] = lora.adapter_state(self.model)
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores what :meth:`get_state` returned; ``model_dir`` may stand for ``model``.

        A ``ref_model`` restores the KL reference as it was, instead of one rebuilt from the
        restored policy when the RL phase starts.
        """
        if lora.is_lora(self.model) and "model" not in state and "adapters" not in state:
            raise CheckpointError("learners.lora_rank: the checkpoint has no LoRA adapters to resume")
        if state.get("ref_model") is not None and not self._sharded():  # sharded: kl_beta is 0
            self.ref_model = self._frozen_copy()
            self.ref_model.load_state_dict(state["ref_model"])
        if "model" in state:
            self._load_model_state(state["model"])
        elif lora.is_lora(self.model):
            pass  # the frozen base is the model directory the learner was built from; adapters below
        elif "model_dir" in state:
            loaded = AutoModelForCausalLM.from_pretrained(state["model_dir"], dtype=torch.float32)
            self._load_model_state(loaded.state_dict())
        if "adapters" in state:
            lora.load_adapters(self.model, state["adapters"])
        if "optimizer" in state and self._sharded():
            sharding.load_optimizer_state(self.model, self.optimizer, state["optimizer"])
        elif "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        if "version" in state:
            self.version = int(state["version"])

    def _load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        """Loads a whole ``state_dict`` into the model (each member keeps its shard when sharded)."""
        if self._sharded():
            sharding.load_model_state(self.model, state)
        else:
            self.model.load_state_dict(state)


def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of a module's ``state_dict`` tensors."""
    return {k: v.detach().to("cpu").clone() for k, v in module.state_dict().items()}


DROPOUT_KEYS = (
    "dropout", "attention_dropout", "hidden_dropout", "activation_dropout", "layerdrop",
    "resid_pdrop", "attn_pdrop", "embd_pdrop", "hidden_dropout_prob", "attention_probs_dropout_prob",
)  # fmt: skip
"""Config keys of dropout and LayerDrop rates in ``transformers`` model configs."""


def _head_in_float32(model: PreTrainedModel) -> None:
    """Runs the output head outside autocast, in float32, so logits (and logprobs) keep full precision.

    The backbone's hidden states are rounded to bfloat16 under autocast; the head's matmul in
    bfloat16 would round the logits too (about 0.1 nats at logits near 30).
    """
    head = model.get_output_embeddings()
    # A bound method, not a closure: copy.deepcopy (the KL reference) rebinds it to the copy's head.
    head.forward = types.MethodType(_float32_forward, head)  # type: ignore[method-assign]


def _float32_forward(head: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The head's own class forward, outside autocast, on float32 inputs."""
    with torch.autocast(hidden.device.type, enabled=False):
        return type(head).forward(head, hidden.float())  # type: ignore[no-any-return]


def _enable_checkpointing(model: PreTrainedModel) -> None:
    """Activation (gradient) checkpointing, non-reentrant, under the installed transformers' name.

    RL updates run the model in eval mode and transformers checkpoints only layers in training mode,
    so the learner keeps the layers in training mode: a model with dropout inside its layers would
    then drop out in RL updates. Such a model is refused.

    Raises:
        ValueError: If the model's config has a nonzero dropout or LayerDrop rate.

    transformers 5.24 renamed ``gradient_checkpointing_enable`` to ``activation_checkpointing_enable``
    (the old name warns); older 5.x releases (vLLM's venv) have only the old one.
    """
    rates = {k: getattr(model.config, k) for k in DROPOUT_KEYS if getattr(model.config, k, 0) or 0}
    if rates:
        raise ValueError(
            f"learners.gradient_checkpointing: the model has dropout {rates}, which would act in RL "
            "updates (checkpointed layers stay in training mode); set those rates to 0 in its config.json"
        )
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
