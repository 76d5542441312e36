"""The train and val batch sources of a run: the tensor cache with batched augmentation on the
device, or the DataLoader stream (data/loaders.py says when each is used), and the epoch's
batches of sample indices."""

from __future__ import annotations

import time

from clarivis.config import TrainConfig
from clarivis.data import cache
from clarivis.data.batch_augment import BatchAugment, Normalize
from clarivis.data.dataset import ImageDataset
from clarivis.data.loaders import StreamBatches, TensorBatches, make_batches, place_cache, shard
from clarivis.data.transforms import Preprocess, eval_transform, train_transform
from clarivis.training import distributed as ddp
from clarivis.training.prepare import PreparedData, class_targets


def epoch_batches(order: list[int], batch_size: int) -> list[list[int]]:
    if not order:
        return []
    return make_batches(order, min(batch_size, len(order)), drop_last=len(order) > batch_size)


def batch_sources(config: TrainConfig, data: PreparedData, preprocess: Preprocess, device, world: ddp.World,
                  console):
    """(train, val) batch sources: the tensor cache with batched augmentation on the device, or
    the DataLoader stream (see data/loaders.py)."""
    train_targets = class_targets(data.train, data.class_names)
    val_targets = class_targets(data.val, data.class_names)
    # Validation keeps every image: no dropped last batch.
    val_order = make_batches(shard(len(data.val), world.rank, world.size), config.batch_size * 2,
                             drop_last=False)
    if config.cache:
        train_pixels, val_pixels = _open_caches(data, preprocess, console, world)
        augment = BatchAugment(preprocess, device, augment=config.augment, hflip=config.hflip)
        train = TensorBatches(place_cache(train_pixels, device), train_targets, augment, device)
        val = TensorBatches(place_cache(val_pixels, device), val_targets, Normalize(preprocess, device),
                            device)
    else:
        class_to_idx = {name: i for i, name in enumerate(data.class_names)}
        train_ds = ImageDataset(
            data.train, class_to_idx,
            train_transform(preprocess, augment=config.augment, hflip=config.hflip), data.train_images,
            img_size=preprocess.img_size, window=preprocess.window,
        )
        val_ds = ImageDataset(data.val, class_to_idx, eval_transform(preprocess), data.val_images,
                              img_size=preprocess.img_size, window=preprocess.window)
        train = StreamBatches(train_ds, device, workers=config.workers, seed=config.seed)
        val = StreamBatches(val_ds, device, workers=config.workers, seed=config.seed)
    val.set_epoch(val_order, 0)
    return train, val


def _open_caches(data, preprocess, console, world):
    """Rank 0 builds the tensor caches; the other ranks then open the same files."""
    pixels = {}
    for turn in (True, False):
        if world.is_main == turn:
            for name, samples, decoded in (("train", data.train, data.train_images),
                                           ("val", data.val, data.val_images)):
                t0 = time.perf_counter()
                with console.status(f"caching {name} images as tensors..."):
                    pixels[name], hit = cache.open_pixel_cache(samples, preprocess, decoded=decoded)
                if not hit and samples:
                    console.print(f"cached {len(samples)} {name} images in "
                                  f"{time.perf_counter() - t0:.1f}s (reused by later runs)")
        if turn:
            ddp.barrier(world)
    data.train_images = data.val_images = None  # consumed into the caches
    return pixels["train"], pixels["val"]
