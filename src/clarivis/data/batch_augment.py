"""Training augmentation on whole batches on the model's device, for the tensor-cache path: one
gather of uint8 pixels, then a few tensor ops per batch instead of a Python transform call per
image (the CIFAR-10 speed-record recipe). Same augmentations as `transforms.train_transform`:
  - small images (<= 64 px): reflect-pad and random translate by up to img_size/8 px;
  - larger images: random-resized crop (area 35-100%, aspect 3/4-4/3), with the flip, as one
    affine grid sample;
  - horizontal flip with probability 1/2;
  - RandAugment / TrivialAugment presets: torchvision v2 applied per chunk of 8 images, so each
    chunk draws its own ops (v2 ops on a batch share one draw per call).
Randomness comes from torch's global generators, which the training loop seeds per epoch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
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
        if self.geometry and self.size > 64:
            return random_resized_crop(x, flip=self.hflip).contiguous(memory_format=torch.channels_last)
        if self.geometry:
            x = random_translate(x, self.translate)
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


def random_resized_crop(x: torch.Tensor, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3), *,
                        flip: bool = False) -> torch.Tensor:
    """Each image: a random box of `scale` of its area and `ratio` aspect, resized back to full
    size (bilinear), mirrored with probability 1/2 when `flip`. One affine_grid + grid_sample for
    the whole batch: 10x faster on CPU than roi_align with 2x2 samples per pixel (128 px, batch
    64: 5 ms against 46 ms, a third of mobilenetv3_small_050's step), and a box never shrinks the
    image, so bilinear needs no antialiasing."""
    n, _, h, w = x.shape
    area = torch.empty(n, device=x.device).uniform_(*scale) * h * w
    log_ratio = torch.empty(n, device=x.device).uniform_(*torch.tensor(ratio).log().tolist())
    aspect = log_ratio.exp()
    bw = (area * aspect).sqrt().clamp(max=w)  # box size, px
    bh = (area / aspect).sqrt().clamp(max=h)
    x0 = torch.rand(n, device=x.device) * (w - bw)  # box corner, px
    y0 = torch.rand(n, device=x.device) * (h - bh)
    # affine_grid maps output coordinates in [-1, 1] to input ones: scale by the box's share of
    # the side, shift to the box centre (align_corners=False: -1 and 1 are the outer pixel edges).
    sx = bw / w
    if flip:
        sx = torch.where(torch.rand(n, device=x.device) < 0.5, -sx, sx)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = sx, (x0 + bw / 2) / w * 2 - 1
    theta[:, 1, 1], theta[:, 1, 2] = bh / h, (y0 + bh / 2) / h * 2 - 1
    grid = F.affine_grid(theta, [n, x.shape[1], h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_hflip(x: torch.Tensor) -> torch.Tensor:
    flip = torch.rand(x.shape[0], device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)
