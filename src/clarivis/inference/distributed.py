"""Several predicting processes under torchrun: who am I, and waiting for the others.

Only the gloo backend is used (CPU collectives on a few integers), so this works the same
with or without GPUs; the images themselves are never exchanged."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from clarivis.errors import ConfigError

# Ranks that finish their share early wait at a barrier for the slowest one, which after a
# resume may still have all of its share to do: the default 30-minute timeout is far too short.
_WAIT = timedelta(days=7)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

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
    return World(rank=rank, size=size, local_rank=local_rank)


def rank_device(device: str | None, world: World) -> str | None:
    """Each process on its own GPU: 'cuda' (or no choice) becomes cuda:LOCAL_RANK."""
    if world.size > 1 and device in (None, "cuda") and torch.cuda.is_available():
        return f"cuda:{world.local_rank % torch.cuda.device_count()}"
    return device


@contextmanager
def process_group(world: World) -> Iterator[None]:
    """The gloo group for the duration of the block (nothing when alone)."""
    if world.size == 1 or dist.is_initialized():
        yield
        return
    dist.init_process_group("gloo", init_method="env://", rank=world.rank,
                            world_size=world.size, timeout=_WAIT)
    try:
        yield
    finally:
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def sum_over_ranks(values: list[int], world: World) -> list[int]:
    if world.size == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.int64)
    dist.all_reduce(tensor)
    return [int(v) for v in tensor.tolist()]
