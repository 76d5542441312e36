"""DistributedDataParallel for training, launched by torchrun: joining with the right backend,
one GPU per process, the DDP wrapper and SyncBatchNorm. The generic helpers (World, barrier,
sums over ranks) live in clarivis/distributed.py, and `--nproc` (relaunching the command under
torchrun, torch-free) in clarivis/torchrun.py; a single process is the world of size 1, so the
training loop has one code path."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from clarivis.distributed import (  # noqa: F401  (barrier, from_main, gather_rows, sum_across: for the loop)
    World,
    barrier,
    from_main,
    gather_rows,
    join,
    leave,
    sum_across,
    world_from_env,
)
from clarivis.errors import ConfigError


def init_world(device: torch.device) -> World:
    """Join the process group torchrun set up: NCCL between GPUs, gloo on CPU."""
    world = world_from_env()
    if not world.distributed:
        return world
    if device.type == "mps":
        raise ConfigError("distributed training runs on CUDA or CPU; pass --device cuda or cpu")
    # Long timeout: rank 0 decodes and caches the dataset while the others wait.
    join(world, "nccl" if device.type == "cuda" else "gloo", timedelta(minutes=60))
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
    leave(world)


def wrap_model(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """DDP around the model (rebuilt by the caller when the set of trainable parameters changes,
    e.g. after a frozen-backbone warm-up: DDP registers the trainable ones at construction)."""
    if not world.distributed:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def sync_batchnorm(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """BatchNorm statistics over the global batch: helps when per-GPU batches are small."""
    if not world.distributed:
        return model
    if device.type != "cuda":
        raise ConfigError("--sync-bn needs CUDA GPUs (PyTorch's SyncBatchNorm); drop it on CPU")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
