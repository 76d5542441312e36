"""A tiny model that tells red from blue, and unlabeled pools with planted "purple" images
halfway between the two classes: left half red, right half blue. Global average pooling and a
linear head make their logits the mean of a red and a blue image's, so the model is unsure of
exactly those, whatever its random features (a purple colour maps anywhere in them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.conftest import CNN, write_image

RED, BLUE = (220, 20, 20), (20, 20, 220)
SIDE = (32, 32)


def make_pool(root: Path, *, red: int = 10, blue: int = 10, purple: int = 4) -> Path:
    """A flat folder of unlabeled images: r*.png, b*.png and the uncertain p*.png."""
    for i in range(red):
        write_image(root / f"r{i}.png", RED, size=SIDE)
    for i in range(blue):
        write_image(root / f"b{i}.png", BLUE, size=SIDE)
    for i in range(purple):
        write_half_and_half(root / f"p{i}.png", seed=i)
    return root


def write_half_and_half(path: Path, seed: int = 0) -> Path:
    """A SIDE image, red on the left half and blue on the right, with the same noise as
    write_image's."""
    w, h = SIDE
    rng = np.random.default_rng(seed)
    colours = np.where(np.arange(w)[None, :, None] < w // 2, RED, BLUE)  # (1, W, 3)
    pixels = np.clip(colours + rng.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="session")
def active_run(tmp_path_factory) -> tuple[Path, Path]:
    """(run folder, its labeled training folder): test_resnet at 32 px with a linear-probe head
    on 12 red and 12 blue images (seconds; the random conv features keep the colour)."""
    import clarivis

    root = tmp_path_factory.mktemp("active")
    for i in range(12):
        write_image(root / "train" / "red" / f"r{i}.png", RED, size=SIDE)
        write_image(root / "train" / "blue" / f"b{i}.png", BLUE, size=SIDE)
    result = clarivis.train(root / "train", out=root / "run", model=CNN, linear_probe=True,
                            img_size=32, workers=0, device="cpu", report=False, val_fraction=0.0)
    return result.run_dir, root / "train"


@pytest.fixture
def pool(tmp_path) -> Path:
    return make_pool(tmp_path / "pool")
