"""Tiny trained and exported bundles shared by tests/export and tests/runtime (no downloads).
Four colour classes with noise and varied sizes: a tiny model learns them in a few epochs, so
its logits are those of a trained model rather than of a random one."""

from __future__ import annotations

import io
from contextlib import redirect_stderr
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"red": (210, 40, 40), "green": (40, 190, 60), "blue": (40, 60, 210), "yellow": (220, 210, 40)}
_CACHE: dict[str, Path] = {}


def colour_images(root: Path, per_class: int, seed: int) -> Path:
    """root/<colour>/*.png|jpg: noisy colour fields of 20-60 px with a random darker patch."""
    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = (int(v) for v in rng.integers(20, 60, 2))
            arr = np.array(colour) + rng.normal(0, 35, (h, w, 3))
            y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
            arr[y:y + h // 2, x:x + w // 2] *= rng.uniform(0.3, 1.0)
            img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
            img.save(root / name / f"{i}.{'jpg' if i % 2 else 'png'}")
    return root


def trained_bundle(base: Path, arch: str) -> Path:
    """A bundle of `arch` at 32 px trained for 4 epochs on 4 x 30 images (a few seconds), in a
    run folder with its split.json; made once per test session."""
    if arch not in _CACHE:
        from rich.console import Console

        import clarivis

        data = colour_images(base / "data", per_class=30, seed=0)
        with redirect_stderr(io.StringIO()):
            result = clarivis.train(data, out=base / "run", model=arch, epochs=4, batch_size=16, workers=0,
                                    img_size=32, device="cpu", report=False,
                                    console=Console(file=io.StringIO()))
        _CACHE[arch] = result.bundle_dir
    return _CACHE[arch]


def held_out(base: Path) -> Path:
    """60 images the models never saw (another seed), for agreement checks."""
    root = base / "held_out"
    return root if root.is_dir() else colour_images(root, per_class=15, seed=1)


_EXPORTS: dict[str, tuple[Path, object]] = {}


def exported(base: Path, arch: str, *, int8: bool) -> tuple[Path, object]:
    """(bundle folder, ExportResult) of `trained_bundle`, exported once per session and checked on
    the held-out images."""
    if arch not in _EXPORTS:
        from clarivis.export import export_bundle

        bundle = trained_bundle(base / arch, arch)
        _EXPORTS[arch] = bundle, export_bundle(bundle, int8=int8, check_data=held_out(base), device="cpu")
    return _EXPORTS[arch]
