"""Accuracy under the changes a deployed camera meets: lighting, angle, blur, noise, JPEG
compression and occlusion, each at 5 severities (ImageNet-C style: 1 mild, 5 severe), applied
with torchvision v2 to the model-input uint8 pixels (after the resize, before normalisation).

Deterministic: every random choice (rotation direction, occluder position, noise) is drawn from
a generator seeded by (seed, corruption, severity) and consumed image by image, so two audits of
one model agree to the digit, whatever the batch size."""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as nnf
import torchvision.transforms.v2.functional as F
from torchvision.transforms import InterpolationMode

from clarivis.errors import DataError
from clarivis.evaluate.inputs import LabeledPixels

SEVERITIES = 5
# 1,000 class-stratified images x (1 clean + 11 corruptions x 5 severities) = 56,000 forward
# passes: about 35 s for resnet18 at 32 px on one CPU core (1,700 corrupted images/s measured,
# the corruptions themselves ~5% of it), and each cell's accuracy is known to about +-3 points
# (95% binomial interval at n = 1,000): finer than the steps between severities.
DEFAULT_MAX_IMAGES = 1000
GREY = 128  # occluder value: mid grey, neither a shadow nor a highlight

# (uint8 (N, 3, S, S), the severity's level, generator) -> uint8 (N, 3, S, S)
CorruptFn = Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class Corruption:
    name: str
    family: str  # lighting, angle, blur, noise, compression or occlusion
    levels: tuple[float, ...]  # the parameter at severity 1..5, in `unit`
    unit: str
    fn: CorruptFn


def _signs(n: int, g: torch.Generator) -> torch.Tensor:
    """bool (n,): True for images that get the 'positive' direction (drawn, not alternated,
    so the draw does not depend on how the images are split into batches)."""
    return torch.rand(n, generator=g) < 0.5


def _brightness(x: torch.Tensor, factor: float, g: torch.Generator) -> torch.Tensor:
    return F.adjust_brightness(x, factor)


def _contrast(x: torch.Tensor, factor: float, g: torch.Generator) -> torch.Tensor:
    return F.adjust_contrast(x, factor)


def _gamma(x: torch.Tensor, gamma: float, g: torch.Generator) -> torch.Tensor:
    # A tone curve off in either direction: gamma (darker mid-tones) or 1/gamma (lighter), per image.
    out, up = x.clone(), _signs(len(x), g)
    out[up] = F.adjust_gamma(x[up], gamma)
    out[~up] = F.adjust_gamma(x[~up], 1 / gamma)
    return out


def _reflect_warp(x: torch.Tensor, warp: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Warp with the scene continued past the border (reflect padding), as a tilted camera would
    see it: black corners would test the fill value, not the tilt."""
    side = x.shape[-1]
    pad = side // 2
    return F.center_crop(warp(F.pad(x, [pad], padding_mode="reflect")), [side, side])


def _rotation(x: torch.Tensor, degrees: float, g: torch.Generator) -> torch.Tensor:
    out, clockwise = x.clone(), _signs(len(x), g)
    for mask, angle in ((clockwise, -degrees), (~clockwise, degrees)):
        if not mask.any():
            continue
        out[mask] = _reflect_warp(
            x[mask], lambda t, a=angle: F.rotate(t, a, interpolation=InterpolationMode.BILINEAR))
    return out


def _perspective(x: torch.Tensor, distortion: float, g: torch.Generator) -> torch.Tensor:
    # RandomPerspective's model: each corner of the image moves inwards by up to
    # distortion * side / 2 on each axis; drawn per image.
    side = x.shape[-1]
    pad = side // 2
    lo, hi = pad, pad + side - 1  # the image's corners inside the padded frame
    start = [[lo, lo], [hi, lo], [hi, hi], [lo, hi]]
    inwards = [[1, 1], [-1, 1], [-1, -1], [1, -1]]
    shifts = (torch.rand(len(x), 4, 2, generator=g) * distortion * side / 2).round().int().tolist()
    out = torch.empty_like(x)
    for i, shift in enumerate(shifts):
        end = [[c[0] + s[0] * d[0], c[1] + s[1] * d[1]]
               for c, s, d in zip(start, inwards, shift, strict=True)]
        out[i] = _reflect_warp(x[i:i + 1], lambda t, e=end: F.perspective(t, start, e))[0]
    return out


def _gaussian_blur(x: torch.Tensor, fraction: float, g: torch.Generator) -> torch.Tensor:
    sigma = fraction * x.shape[-1]  # px
    kernel = 2 * math.ceil(3 * sigma) + 1
    return F.gaussian_blur(x, [kernel, kernel], [sigma, sigma])


def _line_kernels(length: float, angles: torch.Tensor) -> torch.Tensor:
    """float (N, k, k): a straight line of `length` px through the centre at each angle
    (radians), summing to 1: the smear of a camera moving during the exposure."""
    k = 2 * math.ceil(length / 2) + 1
    t = torch.linspace(-length / 2, length / 2, 4 * k)  # points along the line, px
    cols = (k // 2 + t[None] * torch.cos(angles)[:, None]).round().long().clamp(0, k - 1)
    rows = (k // 2 - t[None] * torch.sin(angles)[:, None]).round().long().clamp(0, k - 1)
    kernels = torch.zeros(len(angles), k * k)
    kernels.scatter_add_(1, rows * k + cols, torch.ones_like(t).expand(len(angles), -1).contiguous())
    return (kernels / kernels.sum(1, keepdim=True)).view(-1, k, k)


def _motion_blur(x: torch.Tensor, fraction: float, g: torch.Generator) -> torch.Tensor:
    # torchvision has no motion blur: one grouped convolution applies each image's own line kernel.
    n, c, h, w = x.shape
    kernels = _line_kernels(fraction * w, torch.rand(n, generator=g) * math.pi)  # (N, k, k)
    k = kernels.shape[-1]
    padded = nnf.pad(x.float().reshape(1, n * c, h, w), [k // 2] * 4, mode="replicate")
    blurred = nnf.conv2d(padded, kernels.repeat_interleave(c, 0)[:, None], groups=n * c)
    return blurred.view(n, c, h, w).round().clamp(0, 255).to(torch.uint8)


def _gaussian_noise(x: torch.Tensor, sigma: float, g: torch.Generator) -> torch.Tensor:
    # F.gaussian_noise draws from the global generator; drawing here keeps the audit seeded
    # without touching the caller's random state.
    noise = torch.randn(x.shape, generator=g) * (sigma * 255)
    return (x.float() + noise).round().clamp(0, 255).to(torch.uint8)


def _jpeg(x: torch.Tensor, quality: float, g: torch.Generator) -> torch.Tensor:
    return F.jpeg(x, int(quality))


def _occlusion(x: torch.Tensor, fraction: float, g: torch.Generator) -> torch.Tensor:
    # A grey square of this fraction of the side, wholly inside the image, placed per image.
    side = x.shape[-1]
    size = max(1, round(fraction * side))
    corners = torch.randint(side - size + 1, (len(x), 2), generator=g).tolist()
    grey = torch.tensor(GREY, dtype=torch.uint8)
    return torch.stack([F.erase(img, top, left, size, size, grey)
                        for img, (top, left) in zip(x, corners, strict=True)])


# Levels follow CIFAR-10-C (Hendrycks & Dietterich, 2019) where it has the corruption, with the
# last severities of noise and JPEG pushed towards ImageNet-C's so that 5 is severe at any size.
# Lengths are fractions of the image side, so 32 px and 224 px images blur alike.
CORRUPTIONS: dict[str, Corruption] = {c.name: c for c in (
    Corruption("brightness_down", "lighting", (0.8, 0.65, 0.5, 0.35, 0.2), "factor", _brightness),
    Corruption("brightness_up", "lighting", (1.2, 1.4, 1.6, 1.8, 2.0), "factor", _brightness),
    Corruption("contrast", "lighting", (0.75, 0.5, 0.4, 0.3, 0.15), "factor", _contrast),
    Corruption("gamma", "lighting", (1.3, 1.6, 2.0, 2.5, 3.0), "gamma or 1/gamma", _gamma),
    Corruption("rotation", "angle", (5, 10, 15, 22, 30), "degrees, either way", _rotation),
    Corruption("perspective", "angle", (0.1, 0.2, 0.3, 0.4, 0.5), "corner shift / half side",
               _perspective),
    Corruption("gaussian_blur", "blur", (0.0125, 0.019, 0.022, 0.025, 0.031), "sigma / side",
               _gaussian_blur),
    Corruption("motion_blur", "blur", (0.06, 0.09, 0.12, 0.16, 0.2), "length / side", _motion_blur),
    Corruption("gaussian_noise", "noise", (0.04, 0.06, 0.08, 0.12, 0.18), "sigma (0-1 scale)",
               _gaussian_noise),
    Corruption("jpeg", "compression", (80, 65, 50, 35, 20), "quality", _jpeg),
    Corruption("occlusion", "occlusion", (0.1, 0.2, 0.3, 0.4, 0.5), "square side / side", _occlusion),
)}


def generator_for(name: str, severity: int, seed: int = 0) -> torch.Generator:
    """The generator of one (corruption, severity) cell; crc32, not hash(): stable across runs."""
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}:{severity}".encode()))


def corrupt(pixels: torch.Tensor, name: str, severity: int, *, seed: int = 0,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 (N, 3, S, S) -> the same images under corruption `name` at `severity` (0: none, 1..5).
    Pass one `generator` to corrupt a set batch by batch exactly as in one call."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose one of {', '.join(CORRUPTIONS)}")
    if not 0 <= severity <= SEVERITIES:
        raise ValueError(f"severity must be 0..{SEVERITIES} (got {severity})")
    if severity == 0 or len(pixels) == 0:
        return pixels
    corruption = CORRUPTIONS[name]
    generator = generator or generator_for(name, severity, seed)
    return corruption.fn(pixels, corruption.levels[severity - 1], generator)


def known_images(data: LabeledPixels) -> LabeledPixels:
    """The images of the model's classes; raises when there are none."""
    if not bool(data.known.any()):
        raise DataError("none of the test images belongs to one of the model's classes; "
                        "robustness needs labeled images of those classes")
    return data if bool(data.known.all()) else data.subset(torch.nonzero(data.known).squeeze(1))


def stratified_subset(data: LabeledPixels, max_images: int | None, seed: int = 0) -> LabeledPixels:
    """At most `max_images` images, every class in proportion, chosen by `seed`."""
    if max_images is None or len(data.targets) <= max_images:
        return data
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data.targets), generator=generator)
    # Sorting the shuffled order by class, then taking evenly spaced picks, keeps class proportions.
    by_class = order[torch.argsort(data.targets[order], stable=True)]
    picks = torch.linspace(0, len(by_class) - 1, max_images).round().long()
    return data.subset(by_class[picks].sort().values)


@dataclass
class RobustnessResult:
    clean_accuracy: float
    mean_corruption_accuracy: float  # over every corruption and severity
    relative_drop: float  # 1 - mean corruption accuracy / clean accuracy
    num_images: int
    corruptions: dict  # name -> {"family": str, "accuracy": [severity 1..5], "mean": float}
    families: dict  # family -> mean accuracy over its corruptions and severities

    def to_dict(self) -> dict:
        return asdict(self)


def _accuracy(clf, data: LabeledPixels, batch_size: int, name: str | None = None,
              severity: int = 0, seed: int = 0) -> float:
    """Top-1 accuracy on `data` under one corruption cell, corrupting batch by batch (memory
    stays at one batch however many images there are)."""
    correct = 0
    for start, logits in _cell_logits(clf, data, batch_size, name, severity, seed):
        correct += int((logits.argmax(dim=1) == data.targets[start:start + batch_size]).sum())
    return correct / len(data.targets)


def _cell_logits(clf, data: LabeledPixels, batch_size: int, name: str | None, severity: int,
                 seed: int):
    """(start, float32 (n, C) raw logits) of each batch of `data`, corrupted by `name` at
    `severity` (None: clean), one batch in memory at a time."""
    generator = generator_for(name, severity, seed) if name else None
    for start in range(0, len(data.targets), batch_size):
        pixels = data.pixels[start:start + batch_size]
        if name:
            pixels = corrupt(pixels, name, severity, generator=generator)
        yield start, clf.pixel_logits(pixels, batch_size=batch_size)


def corruption_robustness(clf, data: LabeledPixels, *, severities: int = SEVERITIES,
                          max_images: int | None = DEFAULT_MAX_IMAGES, batch_size: int = 128,
                          seed: int = 0, corruptions: Sequence[str] | None = None) -> RobustnessResult:
    """Accuracy of `clf` on `data` (known classes only, a class-stratified `max_images` subset;
    None: all) under each corruption (default: all of CORRUPTIONS) at severities 1..`severities`."""
    names = _sweep_names(severities, corruptions)
    data = stratified_subset(known_images(data), max_images, seed)

    clean, rows = _sweep(_accuracy, "accuracy", clf, data, names, severities, batch_size, seed)
    mca, families = _means(rows)
    return RobustnessResult(
        clean_accuracy=clean, mean_corruption_accuracy=mca,
        relative_drop=1 - mca / clean if clean > 0 else 0.0, num_images=len(data.targets),
        corruptions=rows, families=families,
    )


def _sweep(score, key: str, clf, data: LabeledPixels, names: list[str], severities: int,
           batch_size: int, seed: int) -> tuple[float, dict]:
    """(clean score, {corruption: {family, `key`: [score at each severity], mean}}) with
    `score(clf, data, batch_size, name, severity, seed)` (accuracy, or mAP for multi-label)."""
    clean = score(clf, data, batch_size)
    rows = {}
    for name in names:
        values = [score(clf, data, batch_size, name, s, seed) for s in range(1, severities + 1)]
        rows[name] = {"family": CORRUPTIONS[name].family, key: values, "mean": sum(values) / len(values)}
    return clean, rows


def _sweep_names(severities: int, corruptions: Sequence[str] | None) -> list[str]:
    """The corruptions to sweep (default: all of CORRUPTIONS), checked with `severities`."""
    if not 1 <= severities <= SEVERITIES:
        raise ValueError(f"severities must be 1..{SEVERITIES} (got {severities})")
    names = list(CORRUPTIONS) if corruptions is None else list(corruptions)
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown or not names:
        raise ValueError(f"unknown corruptions {unknown}; choose from {', '.join(CORRUPTIONS)}")
    return names


def _means(rows: dict) -> tuple[float, dict]:
    """(mean over every corruption's mean, {family: mean over its corruptions})."""
    families: dict[str, list[float]] = {}
    for r in rows.values():
        families.setdefault(r["family"], []).append(r["mean"])
    overall = sum(r["mean"] for r in rows.values()) / len(rows)
    return overall, {f: sum(v) / len(v) for f, v in families.items()}


# ----------------------------------------------------------------------------- multi-label
# A multi-label model has no top-1 accuracy: its sweep measures mAP (macro, over the labels with
# a positive image) under each corruption cell, and the relative mAP drop.


@dataclass
class MultilabelRobustnessResult:
    clean_map: float
    mean_corruption_map: float  # over every corruption and severity
    relative_drop: float  # 1 - mean corruption mAP / clean mAP
    num_images: int
    corruptions: dict  # name -> {"family": str, "map": [severity 1..5], "mean": float}
    families: dict  # family -> mean mAP over its corruptions and severities
    metric: str = "map"

    def to_dict(self) -> dict:
        return asdict(self)


def random_subset(data: LabeledPixels, max_images: int | None, seed: int = 0) -> LabeledPixels:
    """At most `max_images` images chosen by `seed`, in their original order (label sets rarely
    repeat, so there is no class to stratify by)."""
    if max_images is None or len(data.targets) <= max_images:
        return data
    order = torch.randperm(len(data.targets), generator=torch.Generator().manual_seed(seed))
    return data.subset(order[:max_images].sort().values)


def _mean_ap(clf, data: LabeledPixels, batch_size: int, name: str | None = None,
             severity: int = 0, seed: int = 0) -> float:
    """Macro mAP of `clf` on `data` under one corruption cell, corrupting batch by batch."""
    from clarivis.evaluate.subgroups import average_precisions  # numpy; torchmetrics' numbers

    cells = _cell_logits(clf, data, batch_size, name, severity, seed)
    probs = [clf.probabilities(logits) for _, logits in cells]
    aps = average_precisions(torch.cat(probs).double().numpy(), data.targets.numpy())
    aps = aps[aps == aps]  # drop NaN: labels with no positive image have no AP
    return float(aps.mean()) if len(aps) else 0.0


def multilabel_corruption_robustness(clf, data: LabeledPixels, *, severities: int = SEVERITIES,
                                     max_images: int | None = DEFAULT_MAX_IMAGES,
                                     batch_size: int = 128, seed: int = 0,
                                     corruptions: Sequence[str] | None = None
                                     ) -> MultilabelRobustnessResult:
    """mAP of the multi-label `clf` on `data` (targets (N, C) multi-hot; a seeded `max_images`
    subset, None: all) under each corruption at severities 1..`severities`."""
    names = _sweep_names(severities, corruptions)
    if not bool(data.targets.any()):
        raise DataError("no test image has any of the model's labels; robustness needs "
                        "labeled images (mAP counts the labels that are present)")
    data = random_subset(data, max_images, seed)
    clean, rows = _sweep(_mean_ap, "map", clf, data, names, severities, batch_size, seed)
    mean_map, families = _means(rows)
    return MultilabelRobustnessResult(
        clean_map=clean, mean_corruption_map=mean_map,
        relative_drop=1 - mean_map / clean if clean > 0 else 0.0, num_images=len(data.targets),
        corruptions=rows, families=families,
    )
