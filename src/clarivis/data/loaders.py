"""Where training and validation batches come from. Two paths, one interface (iterate to get
(images, targets) already on the device, normalised, channels_last; `len()` is steps):

- `TensorBatches`: the dataset is a uint8 tensor cache (data/cache.py); a batch is one gather
  plus batched augmentation on the device. On a GPU the whole cache is moved there once.
- `StreamBatches`: larger datasets decode per epoch in DataLoader workers (persistent, pinned
  memory, prefetching), with the per-image torchvision transforms.

The sample order of an epoch depends only on (seed, epoch) and is the same on every DDP rank;
each rank takes a disjoint shard (DistributedSampler's scheme). So resume is exact, and ranks
never see the same image in an epoch."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, DistributedSampler

from clarivis.data.batch_augment import BatchAugment, Normalize
from clarivis.data.dataset import ImageDataset, balanced_sampler

# A cache up to this share of the GPU's free memory is moved onto the GPU (CIFAR-10: 150 MB).
GPU_CACHE_SHARE = 0.25


def epoch_order(
    targets: list[int], *, seed: int, epoch: int, balanced: bool, num_classes: int,
    rank: int = 0, world: int = 1,
) -> list[int]:
    """This rank's sample indices for `epoch`, shuffled (or class-balanced) from (seed, epoch)."""
    if balanced:
        generator = torch.Generator().manual_seed(seed * 1000 + epoch)
        order = list(balanced_sampler(targets, num_classes, generator))
        usable = len(order) - len(order) % world  # equal shards: every rank takes as many steps
        return order[rank:usable:world]
    sampler = DistributedSampler(range(len(targets)), num_replicas=world, rank=rank, shuffle=True,
                                 seed=seed, drop_last=world > 1)
    sampler.set_epoch(epoch)
    return list(sampler)


def shard(n: int, rank: int, world: int) -> list[int]:
    """Validation: a plain strided split, every sample seen exactly once over all ranks."""
    return list(range(rank, n, world))


def make_batches(order: list[int], batch_size: int, *, drop_last: bool) -> list[list[int]]:
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    # drop_last avoids a tiny final batch, which BatchNorm cannot train on.
    if drop_last and len(batches) > 1 and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


class TensorBatches:
    def __init__(self, pixels: torch.Tensor, targets: list,
                 transform: BatchAugment | Normalize, device: torch.device):
        """targets: class indices, or multi-hot rows (lists of C floats) for multi-label."""
        self.pixels, self.transform, self.device = pixels, transform, device
        multi_hot = bool(targets) and isinstance(targets[0], list)
        self.targets = torch.as_tensor(targets, dtype=torch.float32 if multi_hot else torch.long,
                                       device=pixels.device)
        self.batches: list[list[int]] = []

    def set_epoch(self, batches: list[list[int]], epoch: int) -> TensorBatches:
        self.batches = batches  # the augmentation draws from torch's generators, seeded per epoch
        return self

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        pin = self.device.type == "cuda" and self.pixels.device.type == "cpu"
        for batch in self.batches:
            idx = torch.as_tensor(batch, device=self.pixels.device)
            images, targets = self.pixels[idx], self.targets[idx]
            if pin:
                images = images.pin_memory()
            images = images.to(self.device, non_blocking=True)
            yield self.transform(images), targets.to(self.device, non_blocking=True)


def place_cache(pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move the uint8 cache onto the GPU when it fits comfortably; else keep it memory-mapped."""
    if device.type != "cuda":
        return pixels
    free, _ = torch.cuda.mem_get_info(device)
    if pixels.numel() <= free * GPU_CACHE_SHARE:
        return pixels.to(device)
    return pixels


class _BatchList:
    """The DataLoader's batch_sampler: whatever index batches the current epoch set."""

    def __init__(self):
        self.batches: list[list[tuple[int, int]]] = []

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


class StreamBatches:
    """A DataLoader whose batches are set per epoch. Each index travels with a seed drawn from
    (seed, epoch, index), so an image's augmentation does not depend on which worker runs it:
    persistent workers and exact resume at once."""

    def __init__(self, dataset: ImageDataset, device: torch.device, *, workers: int, seed: int):
        self.device, self.seed = device, seed
        self.sampler = _BatchList()
        self.loader = DataLoader(
            dataset, batch_sampler=self.sampler, num_workers=workers,
            pin_memory=device.type == "cuda", persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
        )

    def set_epoch(self, batches: list[list[int]], epoch: int) -> StreamBatches:
        base = (self.seed * 1000 + epoch) * 10_000_019
        self.sampler.batches = [[(i, base + i) for i in batch] for batch in batches]
        return self

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        for images, targets in self.loader:
            images = images.to(self.device, non_blocking=True)
            yield (images.contiguous(memory_format=torch.channels_last),
                   targets.to(self.device, non_blocking=True))
