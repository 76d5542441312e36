"""Accuracy under the changes a deployed camera meets: lighting, angle, blur, noise, JPEG
compression and occlusion, each at 5 severities (ImageNet-C style: 1 mild, 5 severe), applied
with torchvision v2 to the model-input uint8 pixels. Deterministic: a seeded generator picks
every random choice, so two audits of one model agree to the digit."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torchvision.transforms.v2.functional as F

from clarivis.evaluate.inputs import LabeledPixels, model_logits

SEVERITIES = 5
# 1,000 images (class-stratified) x 10 corruptions x 5 severities = 50,000 forward passes: about
# 30 s for resnet18 at 32 px on 2 CPU cores; accuracy to about +-1.5 points (binomial, n = 1,000).
DEFAULT_MAX_IMAGES = 1000

Corrupt = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]  # uint8 (N,3,S,S), severity


def _lighting(fn, levels) -> Corrupt:
    return lambda x, s, g: fn(x, levels[s - 1])


def _rotation(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    # Degrees; the sign alternates per image so the test is not one-sided.
    angle = (5.0, 10.0, 15.0, 22.0, 30.0)[s - 1]
    out = x.clone()
    out[0::2] = F.rotate(x[0::2], angle)
    out[1::2] = F.rotate(x[1::2], -angle)
    return out


def _perspective(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    # Each corner moves inwards by up to this fraction of half the side, as RandomPerspective.
    scale = (0.1, 0.2, 0.3, 0.4, 0.5)[s - 1]
    side = x.shape[-1] - 1
    start = [[0, 0], [side, 0], [side, side], [0, side]]
    shift = (torch.rand(4, 2, generator=g) * scale * side / 2).round().int().tolist()
    signs = [[1, 1], [-1, 1], [-1, -1], [1, -1]]  # inwards from each corner
    end = [[c[0] + sg[0] * d[0], c[1] + sg[1] * d[1]] for c, sg, d in zip(start, signs, shift, strict=True)]
    return F.perspective(x, start, end)


def _blur(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    # sigma as a fraction of the side: CIFAR-10-C's 0.4-1.0 px at 32 px, scaled to any size.
    sigma = (0.0125, 0.019, 0.022, 0.025, 0.031)[s - 1] * x.shape[-1]
    kernel = 2 * math.ceil(3 * sigma) + 1
    return F.gaussian_blur(x, [kernel, kernel], [sigma, sigma])


def _noise(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    sigma = (0.04, 0.06, 0.08, 0.09, 0.10)[s - 1]  # on the 0-1 scale, CIFAR-10-C's levels
    with torch.random.fork_rng(devices=[]):  # gaussian_noise draws from the global generator
        torch.manual_seed(int(torch.randint(2**31, (1,), generator=g)))
        noisy = F.gaussian_noise(x.float() / 255, sigma=sigma)
    return (noisy * 255).round().to(torch.uint8)


def _jpeg(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    return F.jpeg(x, (80, 65, 58, 50, 40)[s - 1])  # quality, CIFAR-10-C's levels


def _occlusion(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    # A grey square of this fraction of the side at a random place in each image.
    size = max(1, round((0.1, 0.2, 0.3, 0.4, 0.5)[s - 1] * x.shape[-1]))
    out = x.clone()
    for i in range(len(x)):
        top, left = (torch.randint(x.shape[-1] - size + 1, (2,), generator=g)).tolist()
        out[i] = F.erase(x[i], top, left, size, size, torch.tensor(128, dtype=torch.uint8))
    return out


# name -> (family, corruption); each level is one severity, 1 (mild) .. 5 (severe).
CORRUPTIONS: dict[str, tuple[str, Corrupt]] = {
    "brightness_down": ("lighting", _lighting(F.adjust_brightness, (0.8, 0.65, 0.5, 0.35, 0.2))),
    "brightness_up": ("lighting", _lighting(F.adjust_brightness, (1.25, 1.5, 1.75, 2.0, 2.5))),
    "contrast": ("lighting", _lighting(F.adjust_contrast, (0.7, 0.55, 0.4, 0.3, 0.2))),
    "gamma": ("lighting", _lighting(F.adjust_gamma, (1.3, 1.6, 2.0, 2.5, 3.0))),
    "rotation": ("angle", _rotation),
    "perspective": ("angle", _perspective),
    "gaussian_blur": ("blur", _blur),
    "gaussian_noise": ("noise", _noise),
    "jpeg": ("compression", _jpeg),
    "occlusion": ("occlusion", _occlusion),
}


@dataclass
class RobustnessResult:
    clean_accuracy: float
    mean_corruption_accuracy: float  # over every corruption and severity
    relative_drop: float  # 1 - mean corruption accuracy / clean accuracy
    num_images: int
    corruptions: dict  # name -> {family, accuracy: [severity 1..5], mean}
    families: dict  # family -> mean accuracy

    def to_dict(self) -> dict:
        return asdict(self)


def corrupt(pixels: torch.Tensor, name: str, severity: int, *, seed: int = 0) -> torch.Tensor:
    """uint8 (N, 3, S, S) -> the same images under corruption `name` at `severity` (1..5)."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose one of {', '.join(CORRUPTIONS)}")
    if not 1 <= severity <= SEVERITIES:
        raise ValueError(f"severity must be 1..{SEVERITIES} (got {severity})")
    generator = torch.Generator().manual_seed(seed * 1000 + severity)
    return CORRUPTIONS[name][1](pixels, severity, generator)


def stratified_subset(data: LabeledPixels, max_images: int | None, seed: int = 0) -> LabeledPixels:
    """At most `max_images` images, every class in proportion, chosen by `seed`."""
    if max_images is None or len(data.targets) <= max_images:
        return data
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data.targets), generator=generator)
    # Sorting the shuffled order by class, then taking every k-th, keeps class proportions.
    by_class = order[torch.argsort(data.targets[order], stable=True)]
    picks = torch.linspace(0, len(by_class) - 1, max_images).round().long()
    return data.subset(by_class[picks].sort().values)


def corruption_robustness(clf, data: LabeledPixels, *, max_images: int | None = DEFAULT_MAX_IMAGES,
                          batch_size: int = 128, seed: int = 0) -> RobustnessResult:
    """Accuracy of `clf` on `data` (known classes only) under every corruption and severity."""
    data = stratified_subset(data.subset(torch.nonzero(data.known).squeeze(1)), max_images, seed)

    def accuracy(pixels: torch.Tensor) -> float:
        logits = model_logits(clf, pixels, batch_size=batch_size)
        return float((logits.argmax(dim=1) == data.targets).float().mean())

    clean = accuracy(data.pixels)
    rows = {}
    for name, (family, _) in CORRUPTIONS.items():
        acc = [accuracy(corrupt(data.pixels, name, s, seed=seed)) for s in range(1, SEVERITIES + 1)]
        rows[name] = {"family": family, "accuracy": acc, "mean": sum(acc) / len(acc)}
    mca = sum(r["mean"] for r in rows.values()) / len(rows)
    families: dict[str, list[float]] = {}
    for r in rows.values():
        families.setdefault(r["family"], []).append(r["mean"])
    return RobustnessResult(
        clean_accuracy=clean, mean_corruption_accuracy=mca,
        relative_drop=1 - mca / clean if clean > 0 else 0.0, num_images=len(data.targets),
        corruptions=rows, families={f: sum(v) / len(v) for f, v in families.items()},
    )
