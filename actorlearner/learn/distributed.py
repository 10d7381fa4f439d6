"""Data parallelism across learner processes: torch.distributed set-up and the all-reduces.

Every learner of a group (``learners.num_learners``) holds the whole model and optimizer, collates
the whole batch and computes the gradient of its share of the rows; the shares are summed with one
all-reduce (gloo on CPU, NCCL on GPU), so every learner steps the same optimizer on the same
gradient and the weights stay identical. The loss aggregations already give each row its share of
the full-batch loss (``total_tokens``, ``total_rows``), so the summed gradient is the one learner's
full-batch gradient up to float rounding. This is what ``DistributedDataParallel`` does under
``no_sync`` with one reduction at the end; DDP itself is not used because the learner's forward
(a shared prompt run once, :mod:`actorlearner.learn.prefix`) does not go through ``module(...)``.
"""

from __future__ import annotations

import datetime
import socket
from collections.abc import Iterable, Mapping

import torch
import torch.distributed as dist


def backend_for(device: torch.device, backend: str = "auto") -> str:
    """``auto``: NCCL for CUDA learners, gloo for CPU ones."""
    if backend != "auto":
        return backend
    return "nccl" if device.type == "cuda" else "gloo"


def node_address() -> str:
    """``ip:port`` of this node with a free port, for the group's rendezvous (rank 0 calls it)."""
    try:
        import ray

        ip = ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"
    except ImportError:  # pragma: no cover - ray is a dependency
        ip = "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        port = sock.getsockname()[1]
    return f"{ip}:{port}"


def join(address: str, rank: int, world_size: int, backend: str, timeout_s: float) -> None:
    """Joins the process group at ``address`` (blocks until all ``world_size`` ranks have joined).

    Raises:
        RuntimeError: If the group does not form within ``timeout_s``.
    """
    if dist.is_initialized():
        dist.destroy_process_group()
    dist.init_process_group(
        backend,
        init_method=f"tcp://{address}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )


def shard_rows(n_rows: int, rank: int, world_size: int) -> torch.Tensor:
    """Row indices of ``rank``'s share: every ``world_size``-th row, from row ``rank``.

    On rows sorted by length, every share gets rows of every length (balanced work).
    """
    return torch.arange(rank, n_rows, world_size)


def all_reduce_grads(params: Iterable[torch.nn.Parameter]) -> None:
    """Sums every parameter's gradient over the group, in one flat all-reduce.

    A gradient that is None on every rank stays None (the optimizer skips that parameter, as one
    learner would); one that is None on some ranks only counts as zeros there.
    """
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    ref = params[0]
    flat = torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(ref.dtype) for p in params]
        + [torch.tensor([float(p.grad is not None) for p in params], dtype=ref.dtype, device=ref.device)]
    )
    dist.all_reduce(flat)
    offset = 0
    present = flat[-len(params) :]
    for i, p in enumerate(params):
        size = p.numel()
        summed = flat[offset : offset + size].view_as(p)
        if p.grad is not None:
            p.grad.copy_(summed)  # in place: the flat buffer is the only extra memory
        elif present[i] > 0:
            p.grad = summed.to(p.dtype).clone()
        offset += size


def all_reduce_sums(sums: Mapping[str, float], device: torch.device) -> dict[str, float]:
    """Sums scalar statistics over the group (float64, so the order of summation hardly matters)."""
    keys = sorted(sums)
    values = torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    return dict(zip(keys, values.tolist(), strict=True))
