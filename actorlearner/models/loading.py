"""Loading a policy directory (the tiny default or a user's model) with the ``Auto`` classes."""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """Hides transformers' progress bars (weights loading and saving) inside the block."""
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def cache_keyword(model: torch.nn.Module) -> str:
    """The name of the KV-cache argument of ``model.forward``.

    transformers >= 5.24 names it ``cache`` (``past_key_values`` warns and goes in 5.40); a model
    whose forward predates that still takes ``past_key_values``.
    """
    get_base = getattr(model, "get_base_model", None)  # a peft model's forward takes **kwargs
    base: Any = get_base() if get_base is not None else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def load_model(
    path: Path | str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> PreTrainedModel:
    """Loads a causal LM directory (the tiny model or a user's) in eval mode.

    Args:
        path: Directory written by ``save_pretrained``.
        device: Device to place the model on.
        dtype: Parameter dtype.

    Returns:
        The model.
    """
    with quiet_progress():
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    cast(torch.nn.Module, model).to(device)  # in place
    model.eval()
    return model


def load_model_and_tokenizer(
    path: Path | str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Loads a model directory and its tokenizer with the ``Auto`` classes.

    Args:
        path: Directory written by ``save_pretrained``.
        device: Device to place the model on.
        dtype: Parameter dtype.

    Returns:
        ``(model, tokenizer)``, the model in eval mode.
    """
    return load_model(path, device, dtype), AutoTokenizer.from_pretrained(str(path))


def weight_tensors(weights: Mapping[str, torch.Tensor | np.ndarray]) -> dict[str, torch.Tensor]:
    """Published weights as tensors, without copying.

    Weights from a Ray learner are numpy views of Ray's object store, which are read-only; they are
    only read here (``load_state_dict`` copies them into the model), so torch's warning about
    non-writable arrays is silenced.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return {k: torch.as_tensor(v) for k, v in weights.items()}
