"""Shared fixtures: small generated datasets and the tiny models of tests/tiny.py, built once
per session where they are read-only. No downloads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Two pytest-xdist workers share 2 cores in CI: one torch thread each avoids oversubscription.
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402
from tests.tiny import (  # noqa: E402
    CNN,
    VIT,
    TinyClip,
    clip_images,
    exported,
    make_pool,
    train_bundle,
    train_red_blue,
    write_image,
    write_images,
    write_tiny_clip,
)

torch.set_num_threads(1)


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


@pytest.fixture
def tiny_folder(tmp_path) -> Path:
    """DIR/<class>/*.png with two easily separable classes, 12 images each."""
    return write_images(tmp_path / "tiny", 12, nested=False)


@pytest.fixture
def flat_folder(tmp_path) -> Path:
    """An unlabeled folder: 5 readable 40x30 images of different colours and a broken JPEG
    (tests/test_embeddings.py and the `clarivis embed` tests)."""
    folder = tmp_path / "unlabeled"
    for i in range(5):
        write_image(folder / f"img{i}.png", (40 * i, 90, 160), size=(40, 30))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return folder


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
    return exported(export_base, CNN, int8=True)


@pytest.fixture(scope="session")
def vit_export(export_base):
    """A tiny ViT bundle exported to fp32 ONNX."""
    return exported(export_base, VIT, int8=False)


@pytest.fixture(scope="session")
def export_base(tmp_path_factory):
    """Where the exported tiny models (and their held-out images) live for the session."""
    return tmp_path_factory.getbasetemp() / "export-models"


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """tests/tiny.train_bundle: test_resnet at 32 px told red from blue, for tests that only read
    it (batch prediction, the service). A test that changes its bundle trains its own."""
    return train_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="session")
def active_run(tmp_path_factory) -> tuple[Path, Path]:
    """(run folder, its labeled training folder): test_resnet at 32 px with a linear-probe head
    on 12 red and 12 blue images (seconds; the random conv features keep the colour)."""
    root = tmp_path_factory.mktemp("active")
    result = train_red_blue(root, per_class=12, size=(32, 32), nested=False, linear_probe=True,
                            report=False, val_fraction=0.0, epochs=None, batch_size=None)
    return result.run_dir, root / "train"


@pytest.fixture
def pool(tmp_path) -> Path:
    """tests/tiny.make_pool: 10 red, 10 blue and 4 half-and-half images, unlabeled."""
    return make_pool(tmp_path / "pool")


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> TinyClip:
    """tests/tiny.write_tiny_clip: an open_clip model of seeded random weights (zeroshot extra)."""
    return write_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="session")
def colour_data(tmp_path_factory) -> Path:
    """tests/tiny.clip_images: DIR/<class>/*.png, the 3 colour classes of the tiny CLIP's labels
    (folder names with underscores, as users name them)."""
    return clip_images(tmp_path_factory.mktemp("colours") / "data")
