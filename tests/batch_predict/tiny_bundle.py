"""A tiny trained ModelBundle and image folders for the inference tests (no downloads)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import CNN, write_image


def write_images(root: Path, per_class: int = 6) -> Path:
    """root/red/*.png and root/blue/*.png (per_class each), plus a nested folder."""
    for i in range(per_class):
        write_image(root / "red" / f"r{i}.png", (220, 20, 20))
        write_image(root / "blue" / f"b{i}.png", (20, 20, 220))
    write_image(root / "blue" / "more" / "deep.png", (30, 30, 200))
    return root


def train_bundle(root: Path) -> Path:
    """test_resnet at 32 px, one epoch on 16 images: a couple of seconds on a CPU."""
    import clarivis

    data = write_images(root / "train", per_class=8)
    result = clarivis.train(data, out=root / "run", model=CNN, epochs=1, batch_size=8, workers=0,
                            img_size=32, device="cpu")
    return result.bundle_dir
