"""Data-parallel training across processes started by ``torchrun`` (gloo on the CPU, nccl on GPUs).

``torchrun --standalone --nproc_per_node N -m edgeprune run ...`` starts N processes with
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set; :func:`init_from_env` joins them into one
process group. :func:`~edgeprune.training.train` then wraps the model in
DistributedDataParallel and gives each process its own shard of every epoch, so every process
holds the same weights (and the same masks) after every step. Only rank 0 writes the run's files.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

__all__ = ["init_from_env", "shutdown", "is_distributed", "rank", "world_size", "is_main", "sharded_loader", "gather"]


def is_distributed() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """How many processes train together (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Whether this process writes files: rank 0, or the only process."""
    return rank() == 0


def init_from_env() -> bool:
    """Join the process group that ``torchrun`` describes in the environment; False when started alone.

    The backend is nccl when CUDA is present (each process takes the GPU of its ``LOCAL_RANK``), else gloo.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return is_distributed()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return True


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def sharded_loader(loader: DataLoader, seed: int) -> tuple[DataLoader, DistributedSampler]:
    """A loader like ``loader`` that gives this process its shard of each epoch (call ``sampler.set_epoch``)."""
    sampler = DistributedSampler(loader.dataset, shuffle=True, seed=seed, drop_last=False)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler), sampler


def gather(obj: object) -> list:
    """Every process's ``obj`` (picklable), in rank order, on every process; ``[obj]`` when not distributed."""
    if not is_distributed():
        return [obj]
    gathered: list = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered

