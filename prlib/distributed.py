"""Data-parallel training over processes with ``torch.distributed`` (DDP), the same code path on
one process or many.

Launch a training script with ``torchrun`` (one process per core or GPU)::

    torchrun --nproc-per-node 2 benchmarks/ddp_check.py --steps 200   # the 1-vs-2 process check

``torchrun`` sets ``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` / ``MASTER_PORT``; :func:`init`
reads them and joins the process group (gloo on CPU, NCCL when every process has a GPU).
Without them (a notebook, a plain ``python``) nothing changes: one process, no communication.
Only :class:`PersonalizedRouterV2 <prlib.routers.PersonalizedRouterV2>` splits its steps so
far; any other router trains whole, and identically (same seeds), on every process.

How a step is split (:class:`PersonalizedRouterV2 <prlib.routers.PersonalizedRouterV2>`):
every process draws the *same* global mini-batch from the same seeded generator, keeps its own
shard (:func:`shard`: every ``world``-th request), and scales its loss so that the gradients
DDP averages equal the gradient of the global batch's loss. With dropout off, 1 and 2
processes therefore take the same steps up to float rounding (tested within a tolerance); with
dropout on, each process draws its own masks, so runs agree only statistically. (Float
rounding: the all-reduce sums in another order, and Adam, which divides by each gradient's
running magnitude, can amplify it for parameters whose gradients are near 0.) Validation is
computed on every process from identical weights and rank 0's value is broadcast, so early
stopping stops every process at the same step.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """Whether a process group of more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` without a process group."""
    if not is_distributed():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def init(backend: str = "auto") -> bool:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE`` >
    1); returns whether one is running. ``backend="auto"``: NCCL when CUDA is available, else
    gloo."""
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return True


def shard(idx: np.ndarray) -> np.ndarray:
    """This process's share of a global batch ``idx`` (n,): every ``world``-th entry."""
    rank, world = rank_and_world()
    return idx[rank::world]


def wrap(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` inside :class:`~torch.nn.parallel.DistributedDataParallel` when a process
    group is running (its parameters broadcast from rank 0, gradients averaged in backward);
    ``module`` itself otherwise."""
    if not is_distributed():
        return module
    from torch.nn.parallel import DistributedDataParallel

    device = next(module.parameters()).device
    # buffers synchronised once at start, not at every forward: the module's are constants
    return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None,
                                   forward_sync_buffers=False)


def agree(value: float) -> float:
    """Rank 0's ``value`` on every process (so every process takes the same decision)."""
    if not is_distributed():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.broadcast(t, src=0)
    return float(t.item())
