"""Distributed training (``torchrun``): which process this is, its device, and what the ranks agree on.

A run started by ``torchrun`` with several processes trains one network with DistributedDataParallel,
each process (rank) on its own share of the data; rank 0 alone validates and writes the run folder.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
from datetime import timedelta
from typing import Any, Iterator

import torch

from octasim.model import resolve_device
from octasim.train.state import rng_state

@dataclasses.dataclass(frozen=True)
class World:
    """The processes training one run: ``size`` ranks (1: plain single-process training); rank 0 validates
    and writes the run folder. ``local_rank``: the rank on its machine (its GPU)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def world_from_env() -> World:
    """This process's place in a ``torchrun`` launch (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``), or of the
    process group its caller initialized; a single process when neither says otherwise."""
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), local)
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1:
        return World()
    return World(int(os.environ.get("RANK", "0") or 0), size, local)


def rank_device(name: str, world: World) -> torch.device:
    """The device of a rank: ``cuda`` (or ``auto`` with GPUs) means the rank's own GPU ``cuda:LOCAL_RANK``."""
    dev = resolve_device(name)
    if dev.type != "cuda":
        return dev
    if dev.index is not None:
        raise ValueError(f"--device {name} under torchrun: every rank trains on its own GPU (cuda:LOCAL_RANK); "
                         "give --device cuda or auto, and choose GPUs with CUDA_VISIBLE_DEVICES")
    if world.local_rank >= torch.cuda.device_count():
        raise ValueError(f"rank {world.rank} has LOCAL_RANK {world.local_rank}, but PyTorch sees "
                         f"{torch.cuda.device_count()} GPU(s): start at most one process per GPU")
    torch.cuda.set_device(world.local_rank)
    return torch.device("cuda", world.local_rank)


#: how long ranks wait for each other (rank 0 validates and writes while the others wait)
DIST_TIMEOUT = timedelta(hours=2)


def agree(loss: torch.Tensor, time_up: bool, world: World) -> tuple[float, bool]:
    """(mean loss over ranks, whether any rank's time is up): every rank logs and stops alike."""
    import torch.distributed as dist

    stats = torch.stack([loss.detach().float().reshape(()), torch.tensor(float(time_up), device=loss.device)])
    dist.all_reduce(stats)
    return float(stats[0]) / world.size, bool(stats[1] > 0)


def all_rng_states(world: World) -> list[dict[str, Any]]:
    """Every rank's RNG state (dropout draws differ per rank), gathered for an exact resume."""
    import torch.distributed as dist

    states: list[Any] = [None] * world.size
    dist.all_gather_object(states, rng_state())
    return states



@contextlib.contextmanager
def process_group(device: str, world: World) -> Iterator[torch.device]:
    """This rank's device (:func:`rank_device`), with the process group initialized for the block (NCCL
    on CUDA, gloo on CPU) and destroyed after it once every rank is done, unless the caller had
    initialized it."""
    import torch.distributed as dist

    dev = rank_device(device, world)
    own = not dist.is_initialized()
    if own:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=DIST_TIMEOUT,
                                **({"device_id": dev} if dev.type == "cuda" else {}))
    try:
        yield dev
        if own:
            # Ranks leave together: rank 0 calibrates and writes after the last step, and a rank that
            # tore gloo down meanwhile sometimes aborted at exit (3 of about 60 two-process runs of the
            # tests; none of 70 with this barrier and the collection below).
            dist.barrier()
    finally:
        if own and dist.is_initialized():
            gc.collect()  # the DDP wrapper's reducer holds the group: free it before the group goes
            dist.destroy_process_group()
