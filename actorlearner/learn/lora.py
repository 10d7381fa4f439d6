"""LoRA adapters for the learner (peft): only low-rank adapters train; the runners get merged weights.

With ``learners.lora_rank > 0`` the learner wraps its model with peft's LoRA on the chosen linear
layers (``learners.lora_target_modules``; peft's ``"all-linear"`` leaves out the output head). The
base weights are frozen, so the optimizer holds state for the adapters only. The engines never see
adapters: :func:`merged_state` gives the weights under the base model's names, each adapted layer's
weight as ``W + scale * B @ A`` (peft's own ``get_delta_weight``), which every engine loads as a
full model. Checkpoints keep the adapters; the frozen base weights come from the model directory
the learner was built from.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel

ADAPTER = "default"
"""peft's name of the one adapter the learner trains."""


def add_lora(model: PreTrainedModel, rank: int, alpha: int, targets: str | Sequence[str]) -> torch.nn.Module:
    """``model`` with LoRA adapters of ``rank`` on ``targets`` (peft); only the adapters train.

    Adapter dropout is 0: RL updates run without dropout (the ratio to the old policy would be noise).
    """
    from peft import LoraConfig, get_peft_model

    # peft reads a string other than "all-linear" as a regex over module names: one name is a list
    target = targets if targets == "all-linear" else [targets] if isinstance(targets, str) else list(targets)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=target, lora_dropout=0.0, bias="none")
    embeddings = {id(model.get_input_embeddings()), id(model.get_output_embeddings())}
    try:
        adapted = get_peft_model(model, config, adapter_name=ADAPTER)
    except ValueError as err:  # peft's "no module matched"
        raise ValueError(f"learners.lora_target_modules: {targets!r}: {err}") from None
    _check_adapted(adapted, embeddings)
    return adapted  # type: ignore[no-any-return]


def _check_adapted(model: torch.nn.Module, embeddings: set[int]) -> None:
    """Only linear layers inside the model get adapters (what :func:`merged_state` merges).

    Raises:
        ValueError: For an adapter on the embedding or the output head (tied in many models: the
            runners would re-tie them and lose the delta) or on a non-linear layer.
    """
    from peft.tuners.lora import Linear, LoraLayer

    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        if id(module.get_base_layer()) in embeddings:
            raise ValueError(
                f"learners.lora_target_modules: {name} is the embedding or the output head; adapters "
                "there are not supported (allowed: linear layers inside the model, e.g. all-linear)"
            )
        if not isinstance(module, Linear):
            kind = type(module).__name__
            raise ValueError(f"learners.lora_target_modules: {name} is a {kind}; only linear layers")


def is_lora(model: torch.nn.Module) -> bool:
    """Whether ``model`` carries peft adapters."""
    return hasattr(model, "get_base_model") and hasattr(model, "peft_config")


def merged_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights under the base model's names, adapters merged in (the model's own state otherwise).

    The returned tensors may share memory with the model's (the un-adapted ones); callers copy.
    """
    if not is_lora(model):
        return model.state_dict()
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()  # type: ignore[operator]
    with torch.no_grad():
        deltas = {
            name: module.get_delta_weight(ADAPTER)  # type: ignore[attr-defined]  # lora.Linear's
            for name, module in base.named_modules()
            if isinstance(module, LoraLayer) and ADAPTER in module.lora_A
        }
        state: dict[str, torch.Tensor] = {}
        for key, value in base.state_dict().items():
            if ".lora_" in key:
                continue
            layer, sep, param = key.rpartition(".base_layer.")
            if sep and param == "weight" and layer in deltas:
                value = value + deltas[layer].to(value.dtype)
            state[layer + "." + param if sep else key] = value
    return state


def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of the adapters' tensors (what a checkpoint of a LoRA learner needs)."""
    return {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items() if ".lora_" in k}


def load_adapters(model: torch.nn.Module, adapters: dict[str, torch.Tensor]) -> None:
    """Restores :func:`adapter_state`.

    Raises:
        RuntimeError: If the adapters do not match the model's (another rank or target set).
    """
    own = {k: tuple(v.shape) for k, v in model.state_dict().items() if ".lora_" in k}
    if {k: tuple(v.shape) for k, v in adapters.items()} != own:
        raise RuntimeError(
            "load_adapters: the checkpoint's adapters do not match this learner's in names or shapes "
            f"({len(adapters)} vs {len(own)} tensors; learners.lora_rank or lora_target_modules changed?)"
        )
    model.load_state_dict(adapters, strict=False)


def merged_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A plain model (no adapters) with the adapters merged in, for ``save_pretrained``."""
    return copy.deepcopy(model).merge_and_unload()  # type: ignore[operator,no-any-return]
