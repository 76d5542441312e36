"""A torch Dataset over samples: pixels from memory (decoded once by scan) or from disk."""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from torch.utils.data import Dataset, WeightedRandomSampler

from clarivis.data.io import load_image
from clarivis.data.sources import Sample


def pil_to_uint8(img) -> torch.Tensor:
    """RGB PIL image -> uint8 (3, H, W) tensor."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def label_targets(samples: list[Sample], class_to_idx: dict[str, int], *,
                  multi_hot: bool | None = None) -> list:
    """Class indices (int) of single-label samples; multi-hot rows (C floats) of multi-label
    ones (or of any samples, with multi_hot=True), labels outside `class_to_idx` left out."""
    if multi_hot is None:
        multi_hot = bool(samples) and samples[0].labels is not None
    if not multi_hot:
        return [class_to_idx[s.label] for s in samples]
    rows = []
    for s in samples:
        row = [0.0] * len(class_to_idx)
        for name in s.label_set:
            if name in class_to_idx:
                row[class_to_idx[name]] = 1.0
        rows.append(row)
    return rows


class ImageDataset(Dataset):
    """Yields (normalised image tensor, class index), or (image, multi-hot float (C,) tensor)
    for multi-label samples."""

    def __init__(
        self,
        samples: list[Sample],
        class_to_idx: dict[str, int],
        transform,
        images: list[torch.Tensor] | None = None,
        img_size: int | None = None,
        window: tuple[float, float] | None = None,
    ):
        self.samples = samples
        self.img_size = img_size  # model input side: JPEGs decode reduced towards it
        self.window = window  # DICOM files' VOI window (Preprocess.window)
        self.targets = label_targets(samples, class_to_idx)
        self.transform = transform
        self.images = images  # decoded uint8 tensors, aligned with samples, or None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        """`key` is an index, or (index, seed) to make this image's augmentation reproducible
        whichever worker process draws it."""
        i, seed = key if isinstance(key, tuple) else (key, None)
        if seed is not None:
            torch.manual_seed(seed)
        preloaded = self.images[i] if self.images is not None else None
        pixels = model_pixels(self.samples[i].path, self.img_size, preloaded, window=self.window)
        target = self.targets[i]
        return self.transform(pixels), torch.tensor(target) if isinstance(target, list) else target


def model_pixels(path: str, img_size: int | None, preloaded: torch.Tensor | None = None, *,
                 window: tuple[float, float] | None = None) -> torch.Tensor:
    """uint8 (3, H, W) pixels of `path` as every stage feeds them to a model of input `img_size`
    (reduced JPEG decoding, see load_image). A full-size `preloaded` decode is used when the
    reduction cannot apply to it (a side under 4x img_size); else the file is decoded again.
    `window`: DICOM files' VOI window (the bundle's Preprocess.window; None: the file's own)."""
    if preloaded is not None and (img_size is None or min(preloaded.shape[1:]) < 4 * img_size):
        return preloaded
    return pil_to_uint8(load_image(path, reduce_to=img_size, window=window))


def class_counts(samples: list[Sample], class_names: list[str]) -> dict[str, int]:
    """Images of each class (multi-label: images holding each label)."""
    counts = Counter(name for s in samples for name in s.label_set)
    return {name: counts.get(name, 0) for name in class_names}


def imbalance_ratio(counts: dict[str, int]) -> float:
    """Largest class size over the smallest (1.0 when balanced)."""
    present = [c for c in counts.values() if c > 0]
    return max(present) / min(present) if present else 1.0


def balanced_sampler(
    targets: list[int], num_classes: int, generator: torch.Generator
) -> WeightedRandomSampler:
    """Draw every class equally often per epoch (with replacement), same epoch length."""
    counts = np.bincount(targets, minlength=num_classes).astype(np.float64)
    weights = 1.0 / counts[np.asarray(targets)]
    return WeightedRandomSampler(
        torch.as_tensor(weights, dtype=torch.double), len(targets), replacement=True,
        generator=generator,
    )
