"""Data-parallel training across processes, launched by `accelerate launch` or `torchrun` (DDP semantics).

Every rank holds the whole policy and takes its slice of each step's simulated users; the gradients are
averaged across ranks before clipping and the optimiser step, so N ranks with U users each train exactly like
one process with N*U users. Rank 0 alone writes caches and checkpoints. One process (no launcher) is world 1.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def users(self, n: int) -> range:
        """This rank's slice of a step's n users (n must split evenly, so every rank does the same work)."""
        if n % self.world:
            raise ValueError(f"{n} users per step do not split over {self.world} processes; use a multiple")
        size = n // self.world
        return range(self.rank * size, (self.rank + 1) * size)


def init() -> Ranks:
    """Join the process group the launcher describes (WORLD_SIZE > 1 in the environment), else one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    return Ranks(dist.get_rank(), dist.get_world_size(), local)


def device(ranks: Ranks) -> str:
    """The device this rank trains on: its own GPU, or the CPU."""
    return f"cuda:{ranks.local_rank}" if torch.cuda.is_available() else "cpu"


def sum_across(t: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """Sum a tensor over ranks, in place (identity for one process)."""
    if ranks.world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def sum_gradients(params: list[torch.nn.Parameter], ranks: Ranks) -> None:
    """Sum gradients over ranks (each rank's loss is already divided by the global number of pairs)."""
    for p in params:
        if p.grad is not None:
            sum_across(p.grad, ranks)


def barrier(ranks: Ranks) -> None:
    if ranks.world > 1:
        dist.barrier()
