"""Generated data with planted quality problems for the `clarivis check` tests (no downloads)."""

from __future__ import annotations

import csv
import random
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

# Classes a tiny CNN learns in a few epochs at 32 px: the colour of a rectangle placed at random
# on a noisy grey background (random placement keeps perceptual hashes of distinct images apart).
COLORS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}


def colour_image(name: str, size: int, rng: np.random.Generator) -> Image.Image:
    """A `name`-coloured rectangle at a random place on noisy grey, size x size px."""
    arr = rng.integers(90, 170, (size, size, 3)).astype(np.int64)
    w, h = rng.integers(size // 3, size * 2 // 3, 2)
    x, y = rng.integers(0, size - w), rng.integers(0, size - h)
    arr[y:y + h, x:x + w] = np.array(COLORS[name]) + rng.integers(-25, 25, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def make_colors(root: Path, per_class: int = 40, size: int = 32, seed: int = 0) -> Path:
    """root/{train,val,test}/<colour>/<colour>_NNN.png: 70% / 15% / 15% of each class."""
    rng = np.random.default_rng(seed)
    for name in COLORS:
        for i in range(per_class):
            share = i / per_class
            split = "train" if share < 0.7 else "val" if share < 0.85 else "test"
            path = root / split / name / f"{name}_{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            colour_image(name, size, rng).save(path)
    return root


def flip_labels(root: Path, n: int, seed: int = 0, split: str = "train") -> list[str]:
    """Move n random files of `split` into another class folder; return their new paths."""
    rng = random.Random(seed)
    classes = sorted(p.name for p in (root / split).iterdir() if p.is_dir())
    moved = []
    for file in rng.sample(sorted((root / split).glob("*/*.png")), n):
        other = rng.choice([c for c in classes if c != file.parent.name])
        target = root / split / other / f"flipped_{file.name}"
        shutil.move(file, target)
        moved.append(str(target))
    return moved


def change_label_sets(manifest: Path, n: int, names: list[str], seed: int = 0) -> dict[str, tuple[str, str]]:
    """Plant n label errors in a multi-label manifest (path,labels,...): half the images lose one
    of their labels, half gain one they do not show (an image with every label or none can only
    lose or gain). Returns {manifest path: ("removed" | "added", label)}."""
    rng = random.Random(seed)
    with manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    changed = {}
    for k, i in enumerate(rng.sample(range(len(rows)), n)):
        present = {name for name in rows[i]["labels"].split(";") if name}
        remove = present == set(names) or (bool(present) and k % 2 == 0)
        name = rng.choice(sorted(present if remove else set(names) - present))
        present ^= {name}
        rows[i]["labels"] = ";".join(sorted(present))
        changed[rows[i]["path"]] = ("removed" if remove else "added", name)
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return changed
