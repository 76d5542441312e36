"""Preprocessing: one definition (stored in the ModelBundle) shared by training, evaluate,
predict and later export/serving. Operates on uint8 (3, H, W) tensors with torchvision v2."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from clarivis.spec import Preprocess

__all__ = ["INTERPOLATIONS", "Preprocess", "eval_transform", "resize_transform", "train_transform"]

INTERPOLATIONS = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


class Letterbox(nn.Module):
    """Resize so the longer side fits `size`, then pad to a square with the mean colour
    (zero after normalisation), so nothing at the image's edges is cut off."""

    def __init__(self, size: int, fill: tuple[int, int, int], interpolation: InterpolationMode):
        super().__init__()
        self.size, self.fill, self.interpolation = size, list(fill), interpolation

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        scale = self.size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        if (nh, nw) != (h, w):
            img = F.resize(img, [nh, nw], interpolation=self.interpolation, antialias=True)
        left, top = (self.size - nw) // 2, (self.size - nh) // 2
        if left or top or nw != self.size or nh != self.size:
            padding = [left, top, self.size - nw - left, self.size - nh - top]
            img = F.pad(img, padding, fill=self.fill)
        return img


def resize_transform(pp: Preprocess) -> nn.Module:
    """The deterministic resize to (img_size, img_size) chosen by `resize_mode`."""
    interp = INTERPOLATIONS[pp.interpolation]
    if pp.resize_mode == "squash":
        return v2.Resize((pp.img_size, pp.img_size), interpolation=interp, antialias=True)
    if pp.resize_mode == "crop":
        return v2.Compose([
            v2.Resize(pp.crop_resize_size, interpolation=interp, antialias=True),
            v2.CenterCrop(pp.img_size),
        ])
    if pp.resize_mode == "pad":
        return Letterbox(pp.img_size, pp.fill, interp)
    raise ValueError(f"unknown resize mode {pp.resize_mode!r}")


def _normalize(pp: Preprocess) -> list[nn.Module]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(pp.mean), list(pp.std))]


def eval_transform(pp: Preprocess) -> v2.Compose:
    """uint8 (3, H, W) -> normalised float (3, S, S): used by validation, evaluate and predict."""
    return v2.Compose([resize_transform(pp), *_normalize(pp)])


def train_transform(pp: Preprocess, *, augment: str = "light", hflip: bool = True) -> v2.Compose:
    """The eval resize plus random geometry and the chosen colour/geometry preset."""
    steps: list[nn.Module] = [resize_transform(pp)]
    if augment != "none":
        if pp.img_size <= 64:
            # Small images (CIFAR-like): pad-and-crop translation, as the speed-record recipes do.
            pad = max(2, pp.img_size // 8)
            steps.append(v2.RandomCrop(pp.img_size, padding=pad, padding_mode="reflect"))
        else:
            steps.append(
                v2.RandomResizedCrop(
                    pp.img_size, scale=(0.35, 1.0), interpolation=INTERPOLATIONS[pp.interpolation],
                    antialias=True,
                )
            )
        if hflip:
            steps.append(v2.RandomHorizontalFlip())
    if augment == "randaugment":
        steps.append(v2.RandAugment(num_ops=2, magnitude=9))
    elif augment == "trivialaugment":
        steps.append(v2.TrivialAugmentWide())
    return v2.Compose([*steps, *_normalize(pp)])
