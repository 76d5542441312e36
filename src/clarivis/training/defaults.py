"""Defaults that adapt to the data and the device, each with its reason."""

from __future__ import annotations

import os
import statistics

import torch


def pick_img_size(sizes: list[tuple[int, int]], pretrained_size: int | None = None) -> int:
    """The dataset's typical size: median sqrt(w*h), rounded up to a multiple of 32 and kept in
    32..224. Pretrained weights call for their own input size (features were learned there)."""
    if pretrained_size:
        return pretrained_size
    if not sizes:
        return 224
    return int(min(224, max(32, -(-typical_side(sizes) // 32) * 32)))


def typical_side(sizes: list[tuple[int, int]]) -> float:
    """The dataset's typical image side in px: the median sqrt(w*h) of the (w, h) sizes."""
    return statistics.median((w * h) ** 0.5 for w, h in sizes)


def pick_model(device: torch.device, img_size: int) -> str:
    """Small images (<= 64 px) from scratch get a network made for them (models/small_nets.py):
    timm's resnet18 shrinks 32 px to 8 px before its first block. airnet_s on CPU (half
    airbench94's widths); on a GPU airnet_m (airbench94's network, 4x the compute, which a GPU
    runs nearly free; not measured here). Measured on 5,000 CIFAR-10 JPEGs, 4 epochs, 32 px,
    2 CPU cores, 2,000 test images (benchmarks/README.md, "Small images from scratch"):
    resnet18 0.482, airnet_s 0.556-0.565 (seeds 0-2) at about 6x resnet18's images/s.
    Larger images on CPU get mobilenetv3_large_100 (0.22 GFLOPs at 224 px, 8x less than
    resnet18); on a GPU resnet50, whose extra capacity is nearly free there."""
    if img_size <= 64:
        return "airnet_s" if device.type == "cpu" else "airnet_m"
    if device.type == "cpu":
        return "mobilenetv3_large_100"
    return "resnet50"


def pick_batch_size(n_train: int, img_size: int = 224, recipe: str = "default") -> int:
    """64 images per step (fits every default model on CPU and GPU at default sizes), but at
    least about 16 steps per epoch on tiny datasets, where a few large steps learn nothing.
    Small images (<= 64 px) of a dataset with 20+ such steps an epoch take 256: per-layer
    overheads dominate tiny feature maps, so 4x the batch runs about 2x the images/s (resnet18
    at 32 px on 2 CPU cores: 326 -> 638 img/s). The fast recipe goes to 512 (about 2x the
    images/s of 256 on an H100: 22k -> 40-50k)."""
    for large in (512, 256) if recipe == "fast" else (256,):
        # 16 steps an epoch, not 20, so 4,500 images (the 5,000-image CIFAR case less its val)
        # take 256: airnet_s on 2 CPU cores ran 2.8x the images/s at 256 as at 64, side by side.
        if img_size <= 64 and n_train >= 16 * large:
            return large
    per_epoch = max(1, n_train // 16)
    power_of_two = 1 << (per_epoch.bit_length() - 1)
    return max(16, min(64, power_of_two))


# Fine-tuning pretrained weights with AdamW: 1e-3 at batch 32 (sqrt-scaled like scratch), the
# head starting at zero. Measured on CIFAR-10, 1,000 training images at 96 px, efficientnet_lite0
# ImageNet weights, 3 epochs, batch 32, 1,000 test images (benchmarks/README.md, "Fine-tuning
# defaults"): 1e-3 0.579; 1.4e-4 (the former default, a tenth of scratch) 0.301-0.346; 2e-3 with
# layer decay 0.8 0.569; 1e-3 with layer decay 0.8 0.512 (too little lr below the head).
FINE_TUNE_ADAMW_LR = 1e-3  # at batch 32
# CLIP with --init-from-text: the head already classifies; 2e-5 at batch 64, as CLIP fine-tuning
# recipes such as WiSE-FT use, adapts the tower without unlearning it.
TEXT_INIT_ADAMW_LR = 2e-5  # at batch 64


def pick_lr(optimizer: str, batch_size: int, fine_tune: bool, *, text_init: bool = False) -> float:
    """Peak lr scaled by sqrt(batch) for AdamW (adaptive methods scale so) and linearly for SGD.
    From scratch AdamW 2e-3 at batch 64; fine-tuning: FINE_TUNE_ADAMW_LR above."""
    if optimizer == "adamw":
        if text_init:
            return TEXT_INIT_ADAMW_LR * (batch_size / 64) ** 0.5
        if fine_tune:
            return FINE_TUNE_ADAMW_LR * (batch_size / 32) ** 0.5
        return 2e-3 * (batch_size / 64) ** 0.5
    # Linear scaling, capped: beyond ~0.4 BatchNorm nets need long warm-ups not to diverge. SGD
    # fine-tuning keeps a tenth (0.01 at batch 64), the usual transfer-learning lr for SGD.
    lr = min(0.4, 0.1 * batch_size / 64)
    return lr / 10 if fine_tune or text_init else lr


def pick_resize_mode(fine_tune: bool) -> str:
    """pad from scratch: the whole image, a defect at the edge included. Pretrained weights
    learned on centre crops: crop matches what they saw."""
    return "crop" if fine_tune else "pad"


def pick_crop_pct(resize_mode: str, weights_crop_pct: float | None,
                  sizes: list[tuple[int, int]] | None = None, img_size: int | None = None) -> float:
    """The weights' own crop_pct in crop mode (timm evaluates them so); 1.0 otherwise, and 1.0
    when the typical image (median sqrt(w*h)) is smaller than img_size. An upsampled thumbnail
    frames its object tightly and the crop's margin would cut it: a linear probe on ImageNet
    efficientnet_lite0 features of CIFAR-10 (32 px to 224) lost 5.4 points at 50 labels a class
    with crop_pct 0.875 against 1.0 (0.624 vs 0.678), while on the ants/bees photos (~430 px)
    the two tie (0.928-0.935 vs 0.928; benchmarks/README.md, "few_label_probe.py")."""
    if resize_mode != "crop" or not weights_crop_pct:
        return 1.0
    if sizes and img_size and typical_side(sizes) < img_size:
        return 1.0
    return float(weights_crop_pct)


def pick_warmup_epochs(epochs: int) -> float:
    """Linear warm-up of the lr: one epoch from scratch (avoids early divergence at the peak),
    capped at a fifth of a short run so most of it trains near the peak."""
    return min(1.0, epochs / 5)


def pick_workers(preloaded: bool) -> int:
    """DataLoader workers. Decoded images in memory need little CPU per sample, and on a 2-core
    machine a worker would steal a core from the model: 0. Streaming from disk: cores - 1."""
    cores = os.cpu_count() or 1
    if preloaded:
        return 0 if cores <= 2 else min(4, cores - 1)
    return max(1, min(8, cores - 1))
