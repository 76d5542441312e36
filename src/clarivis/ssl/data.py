"""Unlabeled images for pretraining: a flat folder, a class-folder tree (labels ignored) or a CSV
manifest with a `path` column. Every file is decode-checked once (data/scan.py): corrupt files
are skipped and listed, never fatal. Batches are lists of augmented views."""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as F

from clarivis.data.dataset import model_pixels
from clarivis.data.io import is_image_file
from clarivis.data.loaders import epoch_order, make_batches
from clarivis.data.scan import scan_images
from clarivis.data.sources import SPLIT_NAMES, Sample, fingerprint, read_csv_rows
from clarivis.errors import DataError

UNLABELED_HELP = ("pass a folder of images (flat or in subfolders) or a CSV manifest with a "
                  "'path' column")
NO_LABEL = ""  # Sample.label of every unlabeled image


@dataclass
class UnlabeledData:
    root: Path
    samples: list[Sample]  # the readable images
    images: list[torch.Tensor] | None  # uint8 (3, H, W) per sample when they fit in RAM
    sizes: list[tuple[int, int]]  # (width, height) per sample
    skipped: list[tuple[str, str]]  # (path, reason) of unreadable files
    fingerprint: str  # identity of the file set: a resumed run must see the same images


def prepare_unlabeled(path: str | Path, console: Console) -> UnlabeledData:
    """Index and decode-check the images; DataError when there is nothing usable."""
    root = Path(path).expanduser()
    samples = index_unlabeled(root)
    t0 = time.perf_counter()
    with console.status("checking images (once; later runs reuse the result)..."):
        scan = scan_images(samples)
    if len(scan.samples) < 2:
        raise DataError(f"only {len(scan.samples)} of the {len(samples)} images in {root} could "
                        "be read; pretraining compares images, it needs 2 or more readable ones")
    how = "from the record of an earlier run" if scan.from_record else "by decoding"
    console.print(f"checked {len(samples)} images {how} in {time.perf_counter() - t0:.1f}s")
    return UnlabeledData(root, scan.samples, scan.images, scan.sizes, scan.skipped,
                         fingerprint(samples, root))


def index_unlabeled(root: Path) -> list[Sample]:
    """Every image under a folder (any depth), or those a CSV manifest lists."""
    if not root.exists():
        raise DataError(f"{root} does not exist; {UNLABELED_HELP}")
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise DataError(f"{root} is a file but not a .csv manifest; {UNLABELED_HELP}")
        samples = _manifest_images(root)
    else:
        samples = [Sample(str(p), NO_LABEL) for p in _folder_images(root)]
    if not samples:
        raise DataError(f"{root} holds no images; {UNLABELED_HELP}")
    return samples


def _folder_images(root: Path):
    # A train/val/test tree leaves out test/: features learned on the test images would flatter
    # every later evaluation on them, labels or not.
    skip = {"test"} if (root / "train").is_dir() and any(
        (root / s).is_dir() for s in SPLIT_NAMES if s != "train") else set()
    for dirpath, dirnames, filenames in os.walk(root):
        top = Path(dirpath) == root
        dirnames[:] = sorted(d for d in dirnames
                             if not d.startswith(".") and not (top and d in skip))
        for name in sorted(filenames):
            if not name.startswith(".") and is_image_file(Path(dirpath) / name):  # DICOM by magic too
                yield Path(dirpath) / name


def _manifest_images(csv_path: Path) -> list[Sample]:
    """Rows of a CSV with a `path` column (relative to the CSV's folder); labels are ignored,
    rows of the test split left out (see _folder_images)."""
    rows = read_csv_rows(csv_path, required=("path",))
    samples = []
    for row in rows:
        rel = (row.get("path") or "").strip()
        if rel and (row.get("split") or "").strip().lower() != "test":
            file = Path(rel) if Path(rel).is_absolute() else csv_path.parent / rel
            samples.append(Sample(str(file), NO_LABEL))
    return samples


class ViewDataset(Dataset):
    """Yields the list of augmented views of one image: float (3, s, s) tensors, one per view
    of the method's multi-view transform (2 for SimCLR/BYOL, 2 global + N local for DINO)."""

    def __init__(self, samples: list[Sample], images: list[torch.Tensor] | None, img_size: int,
                 transform):
        self.samples, self.images, self.img_size, self.transform = samples, images, img_size, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> list[torch.Tensor]:
        i, seed = key
        # lightly's transforms draw from torch (crops, jitter) and numpy (blur, solarize):
        # seeding both per image makes an epoch's views independent of the worker drawing them.
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        preloaded = self.images[i] if self.images is not None else None
        pixels = model_pixels(self.samples[i].path, self.img_size, preloaded)  # uint8 (3, H, W)
        return self.transform(F.to_pil_image(pixels))


class ViewBatches:
    """Per-epoch batches of views, on the device: iterate to get a list of V tensors, each
    (B, 3, s, s), channels_last. The order depends only on (seed, epoch): resume is exact."""

    def __init__(self, dataset: ViewDataset, device: torch.device, *, batch_size: int,
                 workers: int, seed: int):
        self.device, self.seed, self.n = device, seed, len(dataset)
        self.batch_size = min(batch_size, self.n)
        # The DataLoader's batch sampler: a list refilled in place every epoch, so persistent
        # workers live on across epochs.
        self.batches: list[list[tuple[int, int]]] = []
        self.loader = DataLoader(
            dataset, batch_sampler=self.batches, num_workers=workers,
            pin_memory=device.type == "cuda", persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
        )

    def steps_per_epoch(self) -> int:
        return len(self._index_batches(1))

    def set_epoch(self, epoch: int) -> ViewBatches:
        base = (self.seed * 1000 + epoch) * 10_000_019
        self.batches[:] = [[(i, base + i) for i in batch] for batch in self._index_batches(epoch)]
        return self

    def _index_batches(self, epoch: int) -> list[list[int]]:
        order = epoch_order([0] * self.n, seed=self.seed, epoch=epoch, balanced=False,
                            num_classes=1)
        # Full batches only: BatchNorm and the contrastive loss both suffer on a tiny last one.
        return make_batches(order, self.batch_size, drop_last=True)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for views in self.loader:
            yield [v.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                   for v in views]
