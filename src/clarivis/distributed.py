"""Several processes under torchrun (which sets RANK, LOCAL_RANK, WORLD_SIZE and the
rendezvous): who am I, joining the process group, waiting for and summing over the others.
Shared by training (DDP, training/distributed.py) and predict (file shards, batch_predict/run.py).
A single process is the world of size 1: every helper here is then a no-op."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from clarivis.errors import ConfigError


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_from_env() -> World:
    """torchrun's RANK, WORLD_SIZE and LOCAL_RANK; one process when they are not set."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ConfigError("WORLD_SIZE, RANK and LOCAL_RANK must be integers; start several "
                          "processes with torchrun") from None
    if size < 1 or not 0 <= rank < size:
        raise ConfigError(f"RANK {rank} does not fit WORLD_SIZE {size}; start several processes "
                          "with torchrun")
    return World(rank=rank, local_rank=local_rank, size=size)


def join(world: World, backend: str, timeout: timedelta) -> None:
    if world.distributed and not dist.is_initialized():
        dist.init_process_group(backend, init_method="env://", rank=world.rank,
                                world_size=world.size, timeout=timeout)


def leave(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def process_group(world: World, backend: str = "gloo",
                  timeout: timedelta = timedelta(days=7)) -> Iterator[None]:
    """The group for the duration of the block (nothing when alone). The default timeout is
    long: ranks that finish their share early wait at a barrier for the slowest one."""
    joined = world.distributed and not dist.is_initialized()
    if joined:
        join(world, backend, timeout)
    try:
        yield
    finally:
        if joined:
            leave(world)


def rank_device(device: str | None, world: World) -> str | None:
    """Each process on its own GPU: 'cuda' (or no choice) becomes cuda:LOCAL_RANK."""
    if world.distributed and device in (None, "cuda") and torch.cuda.is_available():
        return f"cuda:{world.local_rank % torch.cuda.device_count()}"
    return device


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def sum_across(world: World, values: list[float], device: torch.device | None = None) -> list[float]:
    """Element-wise sum of `values` over all ranks (loss sums, correct counts, image counts).
    `device` must be the rank's GPU under NCCL; gloo works on CPU tensors."""
    if not world.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def gather_rows(world: World, rows: torch.Tensor) -> torch.Tensor:
    """Every rank's (n_r, ...) CPU tensor concatenated in rank order, on every rank (multi-label
    validation: average precision needs all scores at once, not sums). A rank with no rows
    passes an empty tensor of any shape; it adds nothing."""
    if not world.distributed:
        return rows
    parts: list = [None] * world.size
    dist.all_gather_object(parts, rows.cpu())
    filled = [p for p in parts if p.numel()]
    return torch.cat(filled) if filled else rows.cpu()


def from_main(world: World, value):
    """Rank 0's `value` on every rank (a run folder name, a stop decision)."""
    if not world.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
