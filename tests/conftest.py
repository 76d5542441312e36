"""Shared fixtures: small generated datasets and tiny timm models, no downloads."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Two pytest-xdist workers share 2 cores in CI: one torch thread each avoids oversubscription.
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402

torch.set_num_threads(1)

CNN = "test_resnet"
VIT = "test_vit"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Tensor caches and scan records go to a per-session folder, never the user's cache."""
    os.environ["CLARIVIS_CACHE_DIR"] = str(tmp_path_factory.mktemp("clarivis-cache"))


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    """The built-in shapes dataset at 32 px, enough images for tiny models to learn."""
    from clarivis.data.builtin import make_shapes

    return make_shapes(tmp_path_factory.mktemp("shapes") / "shapes", per_class=150, img_size=32)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    """The built-in digits dataset at 32 px (1,797 images, 10 classes): a task with a clear
    signal that the tiny models learn from scratch in seconds, whatever the CPU's rounding."""
    from clarivis.data.builtin import make_digits

    return make_digits(tmp_path_factory.mktemp("digits") / "digits", img_size=32)


def write_image(path: Path, color=(200, 30, 30), size=(24, 24), mode="RGB", fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(str(path))) % 2**32)
    arr = np.clip(np.array(color) + rng.integers(-20, 20, (size[1], size[0], 3)), 0, 255)
    Image.fromarray(arr.astype(np.uint8)).convert(mode).save(path, format=fmt)
    return path


@pytest.fixture
def tiny_folder(tmp_path) -> Path:
    """DIR/<class>/*.png with two easily separable classes, 12 images each."""
    root = tmp_path / "tiny"
    for i in range(12):
        write_image(root / "red" / f"r{i}.png", (220, 20, 20))
        write_image(root / "blue" / f"b{i}.png", (20, 20, 220))
    return root


@pytest.fixture(scope="session")
def lighting_run(tmp_path_factory):
    """A model trained on shapes lit almost only brightly, and a test set with every lighting
    (manifest columns lighting, background, color, size): the audit's subgroup case."""
    import clarivis
    from clarivis.data.builtin import make_shapes

    root = tmp_path_factory.mktemp("lighting")
    train = make_shapes(root / "train", per_class=100, img_size=32, seed=1,
                        lighting_weights={"bright": 0.95, "normal": 0.05, "dark": 0.0},
                        split_fractions=(0.85, 0.15, 0.0))
    test = make_shapes(root / "test", per_class=60, img_size=32, seed=2,
                       split_fractions=(0.01, 0.01, 0.98))
    result = clarivis.train(train, out=root / "run", model=CNN, epochs=15, lr=0.01, workers=0,
                            img_size=32, device="cpu")
    return result, test / "manifest.csv"


@pytest.fixture(scope="session")
def cnn_export(export_base):
    """A tiny CNN bundle exported to fp32 and int8 ONNX (tests/export and tests/runtime)."""
    from tests.export.tiny_models import exported

    return exported(export_base, CNN, int8=True)


@pytest.fixture(scope="session")
def vit_export(export_base):
    """A tiny ViT bundle exported to fp32 ONNX."""
    from tests.export.tiny_models import exported

    return exported(export_base, VIT, int8=False)


@pytest.fixture(scope="session")
def export_base(tmp_path_factory):
    """Where the exported tiny models (and their held-out images) live for the session."""
    return tmp_path_factory.getbasetemp() / "export-models"
