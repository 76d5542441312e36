"""A generated dataset whose class evidence sits in a known box: a class-specific stripe pattern
at a random place on grey noise of the same mean and spread, so nothing outside the box says
anything about the class (no downloads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("horizontal", "vertical", "checker")
MEAN, SPREAD = 128.0, 40.0  # grey level and its standard deviation, inside the box and out


def evidence_image(rng: np.random.Generator, label: str, size: int, box: int) -> tuple[np.ndarray, tuple]:
    """uint8 (size, size, 3) image and its evidence box (top, left, bottom, right), px."""
    image = rng.normal(MEAN, SPREAD, (size, size, 1)).repeat(3, axis=2)
    yy, xx = np.mgrid[0:box, 0:box] // 2  # 2 px bands: survive a 2x stride and bilinear resizing
    sign = {"horizontal": yy % 2, "vertical": xx % 2, "checker": (yy + xx) % 2}[label] * 2 - 1
    pattern = MEAN + SPREAD * sign + rng.normal(0, SPREAD / 4, (box, box))
    top, left = (int(v) for v in rng.integers(0, size - box + 1, 2))
    image[top:top + box, left:left + box] = pattern[..., None]
    return np.clip(image, 0, 255).astype(np.uint8), (top, left, top + box, left + box)


def write_evidence_dataset(root: Path, *, per_class: int, size: int, box: int, seed: int = 0) -> Path:
    """root/<class>/<n>.png, `per_class` images each."""
    rng = np.random.default_rng(seed)
    for label in CLASSES:
        (root / label).mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            Image.fromarray(evidence_image(rng, label, size, box)[0]).save(root / label / f"{n}.png")
    return root


def evidence_test_set(n: int, *, size: int, box: int, seed: int = 1):
    """(uint8 (n, 3, size, size) pixels, class names (n,), boxes) drawn fresh, not saved."""
    rng = np.random.default_rng(seed)
    labels = [CLASSES[i % len(CLASSES)] for i in range(n)]
    drawn = [evidence_image(rng, label, size, box) for label in labels]
    pixels = np.stack([image.transpose(2, 0, 1) for image, _ in drawn])
    return pixels, labels, [b for _, b in drawn]


def mass_inside(maps: np.ndarray, boxes: list[tuple]) -> np.ndarray:
    """(N,) share of each map's total mass that falls inside its box."""
    inside = [m[top:bottom, left:right].sum()
              for m, (top, left, bottom, right) in zip(maps, boxes, strict=True)]
    return np.asarray(inside) / np.maximum(maps.reshape(len(maps), -1).sum(axis=1), 1e-12)
