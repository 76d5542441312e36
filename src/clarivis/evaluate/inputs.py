"""Labeled images as the audit stages need them: decoded once, resized to the model input and
kept as uint8, so calibration, subgroups, corruptions and attacks all see the same pixels that
predict would feed (reduced JPEG decode, per-image resize; normalisation happens per batch)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from clarivis.classifier import Classifier
from clarivis.data.dataset import label_targets, model_pixels
from clarivis.data.scan import scan_images
from clarivis.data.sources import Sample
from clarivis.errors import DataError

UNKNOWN_TARGET = -1  # target of an image whose class the model was not trained on


@dataclass
class LabeledPixels:
    pixels: torch.Tensor  # uint8 (N, 3, S, S): resized to the model input, not normalised
    # int64 (N,): class index, UNKNOWN_TARGET for classes the model lacks; multi-label models:
    # float (N, C) multi-hot (labels the model lacks left out)
    targets: torch.Tensor
    samples: list[Sample]  # aligned with pixels (path, label, group attributes)
    skipped: list[dict] = field(default_factory=list)  # {path, reason} of unreadable files

    @property
    def known(self) -> torch.Tensor:
        """bool (N,): the image's class is one of the model's classes (multi-label: every image)."""
        if self.targets.ndim == 2:
            return torch.ones(len(self.targets), dtype=torch.bool)
        return self.targets != UNKNOWN_TARGET

    def subset(self, index: torch.Tensor | list[int]) -> LabeledPixels:
        index = torch.as_tensor(index, dtype=torch.long)
        return LabeledPixels(self.pixels[index], self.targets[index],
                             [self.samples[i] for i in index.tolist()], self.skipped)


def load_labeled_pixels(clf: Classifier, samples: list[Sample]) -> LabeledPixels:
    """Decode and resize `samples` for the Classifier `clf`; unreadable files are skipped."""
    pp = clf.config.preprocess
    scan = scan_images(samples, window=pp.window)
    if not scan.samples:
        raise DataError(f"none of the {len(samples)} images could be read; check the files")
    images = scan.images if scan.images is not None else [None] * len(scan.samples)
    pixels = torch.stack([clf.resize(model_pixels(s.path, pp.img_size, im, window=pp.window))
                          for s, im in zip(scan.samples, images, strict=True)])
    class_to_idx = {name: i for i, name in enumerate(clf.class_names)}
    if clf.config.multilabel:
        rows = label_targets(list(scan.samples), class_to_idx, multi_hot=True)
        targets = torch.tensor(rows, dtype=torch.float32)
        targets = targets.reshape(len(scan.samples), len(class_to_idx))
    else:
        targets = torch.tensor([class_to_idx.get(s.label, UNKNOWN_TARGET) for s in scan.samples])
    return LabeledPixels(pixels, targets, list(scan.samples),
                         [{"path": p, "reason": r} for p, r in scan.skipped])


@dataclass
class ScoredValidation:
    """The validation split already through the saved model: the end of training has it (for
    the metrics and the temperature), so the report reuses it instead of loading the bundle,
    decoding the images and running the model a second time."""

    clf: Classifier  # the run's bundle, temperature fitted
    val: LabeledPixels  # the split's readable val images of known classes
    logits: torch.Tensor  # float32 (N, C) raw logits of val.pixels


def score_samples(clf: Classifier, samples: list[Sample]) -> ScoredValidation:
    """Decode `samples` for `clf` and run it once over them."""
    val = load_labeled_pixels(clf, samples)
    return ScoredValidation(clf, val, clf.pixel_logits(val.pixels))
