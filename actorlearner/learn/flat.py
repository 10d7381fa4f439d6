"""The learner's parameters in one flat tensor, published as one buffer (``PackedWeights``).

After :func:`flatten_parameters` every parameter of the model is a view of one contiguous tensor,
so the learner publishes its weights as that one buffer (:func:`pack_state`) instead of a hundred
separate arrays: Ray's object store takes one large buffer about twice as fast
(``benchmarks/weight_sync.py``). Training is unchanged: the optimizer updates the views in place,
``load_state_dict`` copies into them, and ``deepcopy`` copies each parameter as usual
(``Learner.save_pretrained`` exports CPU copies: ``transformers`` would clone every parameter
sharing the buffer's storage on the parameters' device). Whatever later replaces a parameter
(FSDP2 sharding, LoRA wrapping) simply leaves it outside the buffer: :func:`pack_state` then
publishes it as an extra array, so the result is always complete.

One consequence: pickling or ``torch.save`` of a single parameter writes the whole buffer (its
storage); copy a parameter (``.clone()``) before sending it anywhere on its own.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from actorlearner.core.weights import PackedWeights


def flatten_parameters(model: torch.nn.Module) -> torch.Tensor | None:
    """Moves every parameter of ``model`` into one new flat tensor; returns it.

    Each parameter keeps its identity (optimizers and hooks still hold it); only its ``data``
    becomes a view of the flat tensor. Tied parameters are one parameter, stored once.

    Returns:
        The flat tensor, or None (nothing changed) when the parameters differ in dtype or device
        or there are none.
    """
    params = list(model.parameters())  # unique: a tied parameter appears once
    if not params or len({(p.dtype, p.device) for p in params}) != 1:
        return None
    if len({p.untyped_storage().data_ptr() for p in params}) != len(params):
        return None  # parameters that share memory (tied through .data): copies would untie them
    flat = torch.empty(sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            flat[offset : offset + n].copy_(p.reshape(-1))
            p.data = flat[offset : offset + n].view_as(p)
            offset += n
    return flat


def views_of(model: torch.nn.Module, flat: torch.Tensor) -> bool:
    """Whether every parameter of ``model`` still lives in ``flat``."""
    base = flat.untyped_storage().data_ptr()
    return all(_within(p, flat, base) for p in model.parameters())


def pack_state(state: Mapping[str, torch.Tensor], flat: torch.Tensor, copy: bool) -> PackedWeights:
    """``state`` as :class:`PackedWeights` over ``flat`` (numpy, on the CPU).

    Args:
        state: Name to tensor (a ``state_dict``); entries that are contiguous views of ``flat``
            are packed by position, the others become extra arrays.
        flat: The tensor :func:`flatten_parameters` returned.
        copy: Copy the buffer (and extras) instead of returning views of the live parameters.
    """
    base = flat.untyped_storage().data_ptr()
    layout: list[tuple[str, int, tuple[int, ...]]] = []
    extra: dict[str, np.ndarray] = {}
    for name, tensor in state.items():
        if _within(tensor, flat, base):
            layout.append((name, int(tensor.storage_offset() - flat.storage_offset()), tuple(tensor.shape)))
        else:
            extra[name] = to_numpy(tensor, copy)
    return PackedWeights(to_numpy(flat, copy), tuple(layout), extra)


def _within(tensor: torch.Tensor, flat: torch.Tensor, base: int) -> bool:
    """Whether ``tensor`` is a contiguous run of ``flat``'s elements."""
    return (
        tensor.dtype == flat.dtype
        and tensor.device == flat.device
        and tensor.is_contiguous()
        and tensor.untyped_storage().data_ptr() == base
        and flat.storage_offset() <= tensor.storage_offset()
        and tensor.storage_offset() + tensor.numel() <= flat.storage_offset() + flat.numel()
    )


def to_numpy(tensor: torch.Tensor, copy: bool) -> np.ndarray:
    """A CPU numpy array of ``tensor``: a view unless ``copy`` (a device tensor is copied anyway).

    Raises:
        TypeError: For a dtype numpy lacks (bfloat16): the learner keeps float32 weights.
    """
    cpu = tensor.detach().to("cpu")
    return (cpu.clone() if copy and cpu.device == tensor.device else cpu).numpy()
