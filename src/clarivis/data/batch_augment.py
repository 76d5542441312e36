"""Training augmentation on whole batches on the model's device, for the tensor-cache path: one
gather of uint8 pixels, then a few tensor ops per batch instead of a Python transform call per
image (the CIFAR-10 speed-record recipe). Same augmentations as `transforms.train_transform`:
  - small images (<= 64 px): reflect-pad and random translate by up to img_size/8 px;
  - larger images: random-resized crop (area 35-100%, aspect 3/4-4/3) via roi_align;
  - horizontal flip with probability 1/2;
  - RandAugment / TrivialAugment presets: torchvision v2 applied per chunk of 8 images, so each
    chunk draws its own ops (v2 ops on a batch share one draw per call).
Randomness comes from torch's global generators, which the training loop seeds per epoch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align
from torchvision.transforms import v2

from clarivis.data.transforms import Preprocess

PRESET_CHUNK = 8  # images sharing one preset draw; small enough for variety, large for speed


class Normalize:
    """uint8 (N, 3, S, S) -> float32 normalised, channels_last (the layout convs run fastest in)."""

    def __init__(self, preprocess: Preprocess, device: torch.device):
        self.mean = torch.tensor(preprocess.mean, device=device).view(1, 3, 1, 1) * 255
        self.inv_std = 1 / (torch.tensor(preprocess.std, device=device).view(1, 3, 1, 1) * 255)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() - self.mean) * self.inv_std
        return x.contiguous(memory_format=torch.channels_last)


class BatchAugment:
    def __init__(self, preprocess: Preprocess, device: torch.device, *, augment: str, hflip: bool):
        self.size = preprocess.img_size
        self.normalize = Normalize(preprocess, device)
        self.geometry = augment != "none"
        self.hflip = hflip and augment != "none"
        self.translate = max(2, self.size // 8)  # px; as train_transform's RandomCrop padding
        self.preset = {"randaugment": v2.RandAugment(num_ops=2, magnitude=9),
                       "trivialaugment": v2.TrivialAugmentWide()}.get(augment)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, S, S) on the device -> augmented, normalised float (N, 3, S, S)."""
        if self.preset is not None:
            images = torch.cat([self.preset(chunk) for chunk in images.split(PRESET_CHUNK)])
        x = self.normalize(images)
        if self.geometry:
            x = random_translate(x, self.translate) if self.size <= 64 else random_resized_crop(x)
        if self.hflip:
            x = random_hflip(x)
        return x.contiguous(memory_format=torch.channels_last)


def random_translate(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Shift each image by its own (dy, dx) in [-pad, pad] px, reflecting at the borders."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect").permute(0, 2, 3, 1)  # (N, H', W', C)
    dy = torch.randint(0, 2 * pad + 1, (n, 1), device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), device=x.device)
    rows = (dy + torch.arange(h, device=x.device))[:, :, None]  # (N, H, 1)
    cols = (dx + torch.arange(w, device=x.device))[:, None, :]  # (N, 1, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded[batch, rows, cols].permute(0, 3, 1, 2)  # (N, C, H, W), channels_last strides


def random_resized_crop(x: torch.Tensor, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """Each image: a random box of `scale` of its area and `ratio` aspect, resized back to full
    size (bilinear). One roi_align call for the whole batch."""
    n, _, h, w = x.shape
    area = torch.empty(n, device=x.device).uniform_(*scale) * h * w
    log_ratio = torch.empty(n, device=x.device).uniform_(*torch.tensor(ratio).log().tolist())
    aspect = log_ratio.exp()
    bw = (area * aspect).sqrt().clamp(max=w)
    bh = (area / aspect).sqrt().clamp(max=h)
    x0 = torch.rand(n, device=x.device) * (w - bw)
    y0 = torch.rand(n, device=x.device) * (h - bh)
    boxes = torch.stack([torch.arange(n, device=x.device, dtype=x.dtype), x0, y0, x0 + bw, y0 + bh], 1)
    return roi_align(x.contiguous(), boxes.to(x.dtype), output_size=(h, w), spatial_scale=1.0,
                     sampling_ratio=2, aligned=True)


def random_hflip(x: torch.Tensor) -> torch.Tensor:
    flip = torch.rand(x.shape[0], device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)
