"""Checkpoint files: what each part's ``get_state`` returned, written so that people and tools can read it.

A checkpoint directory holds ``model/`` (the policy, safetensors, with the tokenizer: a directory
``from_pretrained`` loads), ``optimizer.safetensors`` and ``learner.json`` (the learner's optimizer
moments and weights version), ``ref_model.safetensors`` (the KL reference, when ``kl_beta > 0``
and the RL phase has begun), ``buffer.pkl`` (the replay buffer's state) and ``runners.pkl`` (each
runner's task stream and skip list). The algorithm adds ``algorithm.json``, and
``manifest.json`` (each file's size and sha256) is written last.

A checkpoint is written into a hidden temp directory beside its final name and renamed into place
(:func:`publish_checkpoint`), so a crash never leaves a partial checkpoint under the final name;
:func:`verify_checkpoint` checks the manifest before anything is read.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from actorlearner.core.errors import CheckpointError

MANIFEST = "manifest.json"
"""The file listing every other file of a checkpoint with its size and sha256."""

REQUIRED_FILES = (
    "algorithm.json",
    "learner.json",
    "optimizer.safetensors",
    "buffer.pkl",
    "runners.pkl",
    "model/config.json",
    "model/tokenizer_config.json",
)
"""Files every checkpoint has (the weights, ``model/*.safetensors``, are checked separately)."""

CHECKPOINT_ENTRIES = (
    "model",
    "optimizer.safetensors",
    "learner.json",
    "ref_model.safetensors",
    "adapters.safetensors",
    "buffer.pkl",
    "runners.pkl",
    "algorithm.json",
    MANIFEST,
)
"""Every top-level name a checkpoint directory may hold."""

PERIODIC = re.compile(r"checkpoint_(\d+)")
"""Names of the checkpoints a training run writes (``checkpoint_000010``), pruned to the last K."""


def write_checkpoint(out: Path, states: dict[str, Any], model_path: str) -> None:
    """Writes the parts' states under ``out`` (the learner has written ``out/model`` itself).

    Args:
        out: The checkpoint directory.
        states: ``{"learner": {"version", "optimizer", "ref_model", "adapters"?}, "buffer": ...,
            "runners": [...]}`` (``adapters``: a LoRA learner's, written next to the merged model).
        model_path: The policy's source directory, whose tokenizer is copied next to the weights.
    """
    AutoTokenizer.from_pretrained(model_path).save_pretrained(out / "model")
    learner = states["learner"]
    tensors, meta = flatten_optimizer(learner["optimizer"])
    save_file(tensors, str(out / "optimizer.safetensors"))
    (out / "learner.json").write_text(json.dumps({"version": learner["version"], "optimizer": meta}))
    for key in ("ref_model", "adapters"):
        if learner.get(key) is not None:
            save_file({k: v.contiguous() for k, v in learner[key].items()}, str(out / f"{key}.safetensors"))
    (out / "buffer.pkl").write_bytes(pickle.dumps(states["buffer"]))
    (out / "runners.pkl").write_bytes(pickle.dumps(states["runners"]))


def read_checkpoint(src: Path) -> dict[str, Any]:
    """Reads what :func:`write_checkpoint` wrote; parts whose file is absent come back as ``None``.

    Returns:
        ``{"learner": {"version", "optimizer", "model_dir", "ref_model", "adapters"?}, "buffer": ...,
        "runners": ...}`` (``ref_model`` is None when the checkpoint has no KL reference;
        ``adapters`` is there for a LoRA learner's).
    """
    meta = json.loads((src / "learner.json").read_text())
    tensors = load_file(str(src / "optimizer.safetensors"))
    learner = {
        "version": int(meta["version"]),
        "optimizer": unflatten_optimizer(tensors, meta["optimizer"]),
        "model_dir": str(src / "model"),
        "ref_model": load_file(str(ref)) if (ref := src / "ref_model.safetensors").exists() else None,
    }
    if (adapters := src / "adapters.safetensors").exists():
        learner["adapters"] = load_file(str(adapters))
    return {
        "learner": learner,
        "buffer": _unpickle(src / "buffer.pkl"),
        "runners": _unpickle(src / "runners.pkl"),
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(out: Path) -> None:
    """Writes ``out/manifest.json``: every file under ``out`` with its size and sha256."""
    files = {
        path.relative_to(out).as_posix(): {"size": path.stat().st_size, "sha256": _sha256(path)}
        for path in sorted(out.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }
    (out / MANIFEST).write_text(json.dumps({"format": 1, "files": files}, indent=1))


def verify_checkpoint(src: Path) -> None:
    """Checks a checkpoint against its manifest before anything is read.

    Raises:
        CheckpointError: One line naming the directory or the first missing, truncated or altered file.
    """
    if not src.is_dir():
        raise CheckpointError(f"checkpoint: {src} is not a directory; pass a directory written by train")
    try:
        files = json.loads((src / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        raise CheckpointError(
            f"checkpoint: {src} has no {MANIFEST} (incomplete, or written before manifests existed)"
        ) from None
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint: {src / MANIFEST} is damaged ({err!r})") from None
    missing = [name for name in REQUIRED_FILES if name not in files]
    if not any(n.startswith("model/") and n.endswith(".safetensors") for n in files):
        missing.append("model/*.safetensors")
    if missing:
        raise CheckpointError(f"checkpoint: {src} lacks {missing[0]} (its manifest does not list it)")
    for name, entry in files.items():
        _verify_file(src, name, entry)


def _verify_file(src: Path, name: str, entry: dict[str, Any]) -> None:
    path = src / name
    if not path.is_file():
        raise CheckpointError(f"checkpoint: {path} is missing")
    if path.stat().st_size != entry["size"]:
        raise CheckpointError(f"checkpoint: {path} has {path.stat().st_size} bytes, not {entry['size']}")
    if _sha256(path) != entry["sha256"]:
        raise CheckpointError(f"checkpoint: {path} is damaged (its sha256 differs from the manifest)")


def temp_dir_for(out: Path) -> Path:
    """An empty hidden directory beside ``out`` to write a checkpoint into before it is published."""
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def publish_checkpoint(tmp: Path, out: Path) -> None:
    """Renames a complete checkpoint ``tmp`` to ``out``; an existing ``out`` is moved away first.

    At every moment ``out`` is either the old complete checkpoint, absent (between two renames),
    or the new complete one; the old one is deleted only once the new one is in place. An ``out``
    that holds files no checkpoint has (e.g. a run directory) is never deleted: the checkpoint's
    files are moved into it one by one instead, the manifest last (not atomic).
    """
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists() and {p.name for p in out.iterdir()} - set(CHECKPOINT_ENTRIES):
        _merge_into(tmp, out)
        return
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def _merge_into(tmp: Path, out: Path) -> None:
    (out / MANIFEST).unlink(missing_ok=True)  # the directory is no valid checkpoint until the end
    for entry in sorted(tmp.iterdir(), key=lambda p: p.name == MANIFEST):
        dest = out / entry.name
        if dest.is_dir():
            shutil.rmtree(dest)
        entry.replace(dest)
    tmp.rmdir()


def checkpoint_iteration(src: Path) -> int:
    """The iteration a checkpoint was written at (from ``algorithm.json``; -1 when unreadable)."""
    try:
        return int(json.loads((src / "algorithm.json").read_text())["iteration"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoint directories (not temp ones), oldest first by iteration."""
    found = [p for p in run_dir.glob("checkpoint*") if p.is_dir()]
    return sorted(found, key=lambda p: (checkpoint_iteration(p), p.stat().st_mtime))


def prune_checkpoints(run_dir: Path, keep: int) -> list[Path]:
    """Deletes all but the newest ``keep`` periodic checkpoints (``checkpoint_NNNNNN``); 0 keeps all.

    Returns:
        The deleted directories.
    """
    numbered = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := PERIODIC.fullmatch(p.name))]
    periodic = [p for _, p in sorted(numbered) if p.is_dir()]
    doomed = periodic[:-keep] if keep else []
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


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
