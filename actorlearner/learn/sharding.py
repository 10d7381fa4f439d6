"""FSDP2 for a learner group (``learners.sharding: fsdp2``): the model, gradients and AdamW state sharded.

Each member of the group keeps only its shard of every parameter, of its gradient and of the
optimizer's moments (``torch.distributed.fsdp.fully_shard``, FSDP2); a forward or backward pass
gathers a block's parameters for the moment it runs (the root unit's stay gathered from the
forward to the backward pass), and each backward pass reduce-scatters its gradients into the
shards. Tested on CPU with gloo; with NCCL on GPUs it is the same code, not run here.

What that asks of the learner (:class:`~actorlearner.learn.learner.Learner`), and where it is done:

* Every forward and backward pass is a collective, so every member runs the same number of
  micro-batches (a member with fewer rows runs weightless ones: ``Learner._micro_batches``) and one
  forward per micro-batch (shared-prefix forwards are off).
* FSDP2 averages the gradients over the members; the learner's losses are each member's share of
  the full-batch loss and must be summed, so the loss is scaled by the group's size before backward.
* Reading the weights gathers them, also a collective: the learner group calls ``get_weights``,
  ``get_state`` and ``save_pretrained`` on every member (:data:`actorlearner.runtime.group.GATHERS`)
  and rank 0 answers with the whole weights.
* Each member loads the whole model before sharding it (and a restored checkpoint's whole model
  and optimizer state): a model must fit one member's memory at start-up and on restore.
* Checkpoints hold the whole model and optimizer state in the unsharded layout (the optimizer's
  ``state_dict`` keyed by parameter index), so a sharded run resumes an unsharded one's checkpoint
  and the other way round.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)
"""Whole tensors, on the CPU of rank 0 only (the other members get empty dicts)."""
_SCATTER = StateDictOptions(full_state_dict=True)
"""Whole tensors given to every member, each keeping its shard."""


def shard(model: torch.nn.Module) -> None:
    """Shards ``model`` in place: a unit per transformer block, and the rest as the root unit.

    The root unit holds the embeddings, the final norm and the output head. The blocks are the
    modules ``transformers`` names in ``model._no_split_modules``; a model that names none is
    sharded as one unit.
    """
    blocks = set(getattr(model, "_no_split_modules", None) or ())
    for module in list(model.modules()):
        if module is not model and type(module).__name__ in blocks:
            fully_shard(module)
    fully_shard(model)


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether :func:`shard` was applied to ``model``."""
    return isinstance(model, FSDPModule)


def full_value(value: Any) -> Any:
    """A sharded tensor (``DTensor``, e.g. a gradient norm) as a whole tensor; anything else as is."""
    return value.full_tensor() if isinstance(value, DTensor) else value


def local_bytes(model: torch.nn.Module) -> int:
    """Bytes of the parameters this member holds: its shards when sharded, else the whole model."""
    local = (p.to_local() if isinstance(p, DTensor) else p for p in model.parameters())
    return sum(t.numel() * t.element_size() for t in local)


def gather_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole ``state_dict`` on rank 0's CPU (``{}`` on the others); every member must call it."""
    state: Any = get_model_state_dict(model, options=_GATHER)
    return state


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Loads a whole ``state_dict`` (every member calls it with the same one)."""
    set_model_state_dict(model, dict[str, Any](state), options=_SCATTER)


def _trainable_names(model: torch.nn.Module) -> list[str]:
    """Names of the parameters in the order the learner gives them to its optimizer."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


def gather_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's whole ``state_dict`` on rank 0 (``{}`` on the others); every member calls it.

    Keyed by parameter index, as an unsharded optimizer's.
    """
    if not optimizer.state:  # torch's gather would first take a zero step to create the moments
        return optimizer.state_dict()
    state: Any = get_optimizer_state_dict(model, optimizer, options=_GATHER)
    if not state:
        return {}
    index = {name: i for i, name in enumerate(_trainable_names(model))}
    return {
        "state": {index[name]: value for name, value in state["state"].items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]],
    }


def load_optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Loads an optimizer ``state_dict`` keyed by parameter index (every member, the same one)."""
    if not state["state"]:  # nothing to shard; torch's scatter would first take a zero step
        optimizer.load_state_dict(state)
        return
    names = _trainable_names(model)
    groups = [{**g, "params": [names[int(i)] for i in g["params"]]} for g in state["param_groups"]]
    moments = {names[int(i)]: value for i, value in state["state"].items()}
    by_name: Any = {"state": moments, "param_groups": groups}
    set_optimizer_state_dict(model, optimizer, by_name, options=_SCATTER)
