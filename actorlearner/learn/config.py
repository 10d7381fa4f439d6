"""Config sections of the learner: the RL-phase loss and optimizer, cold-start SFT, the learner actor.

The pluggable math (``advantage``, ``policy_loss``, ``kl_estimator``, ``loss_aggregation``) is
validated against the registries of :mod:`actorlearner.learn.registry`, whose names are the single
list of what is allowed.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from actorlearner.core.config import ClassSpec, CustomResources, Section
from actorlearner.core.registry import Registry
from actorlearner.learn.registry import (
    ADVANTAGE_ESTIMATORS,
    KL_ESTIMATORS,
    LOSS_AGGREGATIONS,
    POLICY_LOSSES,
)

_REGISTRY_FIELDS: dict[str, Registry[Any]] = {
    "advantage": ADVANTAGE_ESTIMATORS,
    "policy_loss": POLICY_LOSSES,
    "kl_estimator": KL_ESTIMATORS,
    "loss_aggregation": LOSS_AGGREGATIONS,
}


def _choice(registry: Registry[Any], what: str) -> str:
    """A field description that lists the registry's built-in names."""
    return f"{what}: a registered name ({', '.join(registry.names())}), 'pkg.mod:fn' path or callable."


class TrainingConfig(Section):
    """The RL phase: GRPO-family loss and optimizer."""

    num_iterations: int = Field(200, ge=0, description="Learner updates in the RL phase.")
    time_budget_s: float | None = Field(None, gt=0, description="Stop the RL phase after this long.")
    train_batch_groups: int = Field(32, ge=1, description="Groups per learner update.")
    synchronous: bool = Field(
        False,
        description="Classic loop (a baseline): runners play exactly one batch, then the learner "
        "trains and syncs weights; default: asynchronous.",
    )
    lr: float = Field(2e-4, gt=0, description="AdamW learning rate.")
    adam_betas: tuple[float, float] = Field((0.9, 0.99), description="AdamW betas.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, gt=0, description="Global gradient-norm clip.")
    advantage: Any = Field("grpo", description=_choice(ADVANTAGE_ESTIMATORS, "Advantage estimator"))
    policy_loss: Any = Field(
        "ppo_clip", description=_choice(POLICY_LOSSES, "Policy loss (ppo_clip reads the clip settings)")
    )
    loss_aggregation: Any = Field(
        "token_mean", description=_choice(LOSS_AGGREGATIONS, "How per-token losses reduce to a scalar")
    )
    clip_low: float = Field(0.2, ge=0, description="PPO clip range below 1.")
    clip_high: float = Field(0.2, ge=0, description="PPO clip range above 1 (DAPO clip-higher: 0.28).")
    dual_clip: float | None = Field(None, gt=1, description="Dual-clip constant c (e.g. 3), off when null.")
    off_policy_correction: Literal["none", "tis", "decoupled"] = Field(
        "none",
        description="Stale or mismatched data: none (ratio to the engine's log-probs), tis (ratio to the "
        "learner's own, weights min(pi_learner/pi_engine, is_cap)), decoupled (AReaL; tokens above is_cap "
        "dropped).",
    )
    is_cap: float = Field(
        2.0,
        gt=1,
        description="Cap of those weights: truncation (tis; paper 2) or masking (decoupled; AReaL 5).",
    )
    kl_beta: float = Field(0.0, ge=0, description="Weight of the KL penalty to the reference model.")
    kl_estimator: Any = Field("k3", description=_choice(KL_ESTIMATORS, "KL estimator"))
    entropy_advantage_coef: float = Field(
        0.0, ge=0, description="TAO-RL: c of A' = A(1 + c z(H)) on the scope's tokens (0 off; paper 0.01)."
    )
    entropy_advantage_detach: bool = Field(
        True, description="Detach the entropy in that shaping (our choice); false reproduces the reference."
    )
    entropy_advantage_scope: Literal["post_tool", "post_tool_else_all", "all"] = Field(
        "post_tool",
        description="Tokens that shaping covers: post_tool (the paper's text; none in a micro-batch without "
        "post-tool tokens), post_tool_else_all (then all, as the reference code), all (reference's config).",
    )
    micro_batch_size: int = Field(
        32,
        ge=1,
        description="Trajectories per forward/backward pass of an RL update or SFT step "
        "(32: fastest for the tiny model on CPU).",
    )
    shared_prefix: bool = Field(
        True,
        description="Run a prompt that several rows of a micro-batch share once, not once per row "
        "(same gradient up to float rounding; docs/algorithms.md §3).",
    )
    max_wait_s: float = Field(
        60.0, gt=0, description="Longest the learner waits for a full batch; then it trains on what is there."
    )
    update_timeout_s: float = Field(
        600.0,
        gt=0,
        description="Longest the driver waits for one update beyond max_wait_s; a learner or buffer "
        "that does not answer is reported as hung and the run stops.",
    )

    @field_validator(*_REGISTRY_FIELDS)
    @classmethod
    def _registered(cls, value: Any, info: ValidationInfo) -> Any:
        return _REGISTRY_FIELDS[str(info.field_name)].check(value)

    def portable(self) -> TrainingConfig:
        """A detached copy for another process (a Ray learner actor).

        Names registered only in this process (a notebook, a script's ``__main__``) are replaced by
        the functions they name; built-in names stay names.
        """
        update = {key: reg.portable(getattr(self, key)) for key, reg in _REGISTRY_FIELDS.items()}
        return self.detached_copy(**update)


class SFTConfig(Section):
    """Cold start: supervised fine-tuning on the env's demonstrations before RL."""

    enabled: bool = Field(True, description="Run SFT when the env offers demonstration(); skip otherwise.")
    steps: int = Field(300, ge=0, description="Optimizer steps.")
    batch_size: int = Field(64, ge=1, description="Trajectories per step.")
    lr: float = Field(2e-3, gt=0, description="Peak learning rate (cosine decay to 0).")
    num_demos: int = Field(4096, ge=1, description="Demonstration episodes collected.")


class LearnerConfig(Section):
    """The learner actor."""

    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = CUDA when present.")
    num_cpus: float = Field(1.0, ge=0, description="Ray CPUs reserved for each learner.")
    num_learners: int = Field(
        1,
        ge=1,
        description="Data-parallel learners (torch.distributed): each trains on its share of every "
        "batch and gradients are summed, so N learners step like one at the same batch; needs Ray "
        "(env_runners.num_env_runners > 0). Packed onto as few nodes as possible.",
    )
    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="torch.distributed backend of a learner group: auto = NCCL on CUDA, else gloo."
    )
    sharding: Literal["none", "fsdp2"] = Field(
        "none",
        description="How a learner group holds the model: none = every member a whole copy (data "
        "parallel); fsdp2 = parameters, gradients and AdamW state sharded over the members "
        "(torch.distributed.fsdp.fully_shard; needs num_learners >= 2; not with lora_rank, "
        "gradient_checkpointing, autocast or training.kl_beta > 0; shared-prefix forwards are off).",
    )
    resources: CustomResources = Field(
        default_factory=dict,
        description="Ray custom resources each learner needs (e.g. {'learn': 1}: only on nodes started "
        "with that resource).",
    )
    num_threads: int | None = Field(None, ge=1, description="torch threads; default: Ray's per-actor share.")
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute activations in the backward pass: less memory, about a third more "
        "compute; shared-prefix forwards (training.shared_prefix) are off with it; models with "
        "dropout are refused.",
    )
    autocast: Literal["none", "bf16"] = Field(
        "none",
        description="Mixed precision: the backbone under torch.autocast in bfloat16, the output head, "
        "logprobs, loss, weights, gradients and optimizer in float32.",
    )
    lora_rank: int = Field(
        0,
        ge=0,
        description="LoRA adapters of this rank (peft) on lora_target_modules: only they train (SFT and "
        "RL), the runners get merged weights, checkpoints keep the adapters (0: full fine-tuning).",
    )
    lora_alpha: int = Field(16, gt=0, description="LoRA scale: adapters add alpha / rank * B @ A.")
    lora_target_modules: str | list[str] = Field(
        "all-linear",
        description="Layers that get adapters: peft's 'all-linear' (every linear layer but the output "
        "head) or module names such as [q_proj, v_proj].",
    )
    learner_cls: ClassSpec = Field(
        None,
        description="A Learner subclass or 'pkg.mod:Class' path to run instead of the built-in (null).",
    )
