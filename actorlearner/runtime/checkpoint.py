"""Checkpoint files: what each part's ``get_state`` returned, written so that people and tools can read it.

A checkpoint directory holds ``model/`` (the policy, safetensors, with the tokenizer: a directory
``from_pretrained`` loads), ``optimizer.safetensors`` and ``learner.json`` (the learner's optimizer
moments and weights version), ``ref_model.safetensors`` (the KL reference, when ``kl_beta > 0``
and the RL phase has begun), ``buffer.pkl`` (the replay buffer's state) and ``runners.pkl`` (each
runner's task stream and skip list). The algorithm adds ``algorithm.json``.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer


def write_checkpoint(out: Path, states: dict[str, Any], model_path: str) -> None:
    """Writes the parts' states under ``out`` (the learner has written ``out/model`` itself).

    Args:
        out: The checkpoint directory.
        states: ``{"learner": {"version", "optimizer", "ref_model"}, "buffer": ..., "runners": [...]}``.
        model_path: The policy's source directory, whose tokenizer is copied next to the weights.
    """
    AutoTokenizer.from_pretrained(model_path).save_pretrained(out / "model")
    learner = states["learner"]
    tensors, meta = flatten_optimizer(learner["optimizer"])
    save_file(tensors, str(out / "optimizer.safetensors"))
    (out / "learner.json").write_text(json.dumps({"version": learner["version"], "optimizer": meta}))
    if learner.get("ref_model") is not None:
        save_file(
            {k: v.contiguous() for k, v in learner["ref_model"].items()}, str(out / "ref_model.safetensors")
        )
    (out / "buffer.pkl").write_bytes(pickle.dumps(states["buffer"]))
    (out / "runners.pkl").write_bytes(pickle.dumps(states["runners"]))


def read_checkpoint(src: Path) -> dict[str, Any]:
    """Reads what :func:`write_checkpoint` wrote; parts whose file is absent come back as ``None``.

    Returns:
        ``{"learner": {"version", "optimizer", "model_dir", "ref_model"}, "buffer": ..., "runners": ...}``
        (``ref_model`` is None when the checkpoint has no KL reference).
    """
    meta = json.loads((src / "learner.json").read_text())
    tensors = load_file(str(src / "optimizer.safetensors"))
    learner = {
        "version": int(meta["version"]),
        "optimizer": unflatten_optimizer(tensors, meta["optimizer"]),
        "model_dir": str(src / "model"),
        "ref_model": load_file(str(ref)) if (ref := src / "ref_model.safetensors").exists() else None,
    }
    return {
        "learner": learner,
        "buffer": _unpickle(src / "buffer.pkl"),
        "runners": _unpickle(src / "runners.pkl"),
    }


def _unpickle(path: Path) -> Any:
    return pickle.loads(path.read_bytes()) if path.exists() else None


def flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Splits a torch optimizer ``state_dict`` into named tensors (safetensors) and JSON metadata."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in state["state"].items():
        for key, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`flatten_optimizer`."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    for pid, scalars in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(scalars)
    return {"state": state, "param_groups": meta["param_groups"]}
