"""DistributedDataParallel plumbing, launched by torchrun (which sets RANK, LOCAL_RANK,
WORLD_SIZE and the rendezvous). A single process is the world of size 1: every helper here is
then a no-op, so the training loop has one code path."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

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


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def relaunch_with_torchrun(nproc: int, argv: list[str]) -> int:
    """`clarivis train ... --nproc N`: run the same command under torchrun with N processes on
    this machine; returns torchrun's exit code. (Several machines: call torchrun yourself.)"""
    args = _without_option(argv, "--nproc")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "clarivis", *args]
    return subprocess.call(command)


def _without_option(argv: list[str], name: str) -> list[str]:
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True  # "--nproc 2": drop the value too
        elif not arg.startswith(name + "="):
            kept.append(arg)
    return kept


def init_world(device: torch.device) -> World:
    """Join the process group torchrun set up: NCCL between GPUs, gloo on CPU."""
    if not launched_by_torchrun():
        return World()
    world = World(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)),
                  int(os.environ["WORLD_SIZE"]))
    if device.type == "mps":
        raise ConfigError("distributed training runs on CUDA or CPU; pass --device cuda or cpu")
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # Long timeout: rank 0 decodes and caches the dataset while the others wait.
        dist.init_process_group(backend, timeout=timedelta(minutes=60))
    if device.type == "cpu":
        # Share the cores: N processes with all threads each would oversubscribe the CPU.
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world.size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    return world


def device_for(world: World, device: torch.device) -> torch.device:
    """One GPU per process: cuda:LOCAL_RANK."""
    if world.distributed and device.type == "cuda":
        torch.cuda.set_device(world.local_rank)
        return torch.device("cuda", world.local_rank)
    return device


def close_world(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def sum_across(world: World, values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of `values` over all ranks (loss sums, correct counts, image counts)."""
    if not world.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def from_main(world: World, value):
    """Rank 0's `value` on every rank (a run folder name, a stop decision)."""
    if not world.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap_model(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """DDP around the model (rebuilt by the caller when the set of trainable parameters changes,
    e.g. after a frozen-backbone warm-up: DDP registers the trainable ones at construction)."""
    if not world.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def sync_batchnorm(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """BatchNorm statistics over the global batch: helps when per-GPU batches are small."""
    if not world.distributed:
        return model
    if device.type != "cuda":
        raise ConfigError("--sync-bn needs CUDA GPUs (PyTorch's SyncBatchNorm); drop it on CPU")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
