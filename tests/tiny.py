"""Every tiny model the tests use, and the generated images they see: built offline in seconds
(no downloads, no ../shared). tests/conftest.py registers the shared pytest fixtures over these
builders; a test that needs a variant calls a builder with its own settings.

Three worlds, each with its own images:
- red/blue: squares of two colours that any tiny model tells apart (`write_images`,
  `train_red_blue`, `train_bundle`), and pools of half-red half-blue images it is unsure of
  (`make_pool`, active labeling);
- colours: four noisy colour fields a tiny model learns in 4 epochs, so its logits are those of
  a trained model (`trained_bundle`, `exported`: the export and runtime tests);
- tiny CLIP: an open_clip model of seeded random weights (`write_tiny_clip`) and the three
  colour classes its labels name (`clip_images`).
Untrained models (`tiny_classifier`, `random_weights`) need no images."""

from __future__ import annotations

import io
import json
import math
from contextlib import redirect_stderr
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from PIL import Image
from rich.console import Console
from safetensors.torch import save_file

import clarivis
from clarivis.api import TrainResult
from clarivis.classifier import Classifier
from clarivis.models.factory import create_model
from clarivis.spec import BundleConfig, Preprocess

CNN = "test_resnet"  # timm's test ResNet: 0.37 M parameters with 10 classes
VIT = "test_vit"  # timm's test ViT: 0.31 M parameters, 16 px patches unless told otherwise

# ----------------------------------------------------------------------------- images


def write_image(path: Path, color=(200, 30, 30), size=(24, 24), mode="RGB", fmt=None) -> Path:
    """A `size` (w, h) field of `color` with +-20 noise, seeded by the path; parents made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(str(path))) % 2**32)
    arr = np.clip(np.array(color) + rng.integers(-20, 20, (size[1], size[0], 3)), 0, 255)
    Image.fromarray(arr.astype(np.uint8)).convert(mode).save(path, format=fmt)
    return path


RED, BLUE = (220, 20, 20), (20, 20, 220)
SIDE = (32, 32)  # the pools' image size (w, h), the tiny models' input size


def write_images(root: Path, per_class: int = 6, *, size=(24, 24), nested: bool = True) -> Path:
    """root/red/r*.png and root/blue/b*.png (per_class each), plus root/blue/more/deep.png when
    `nested`."""
    for i in range(per_class):
        write_image(root / "red" / f"r{i}.png", RED, size=size)
        write_image(root / "blue" / f"b{i}.png", BLUE, size=size)
    if nested:
        write_image(root / "blue" / "more" / "deep.png", (30, 30, 200), size=size)
    return root


def make_pool(root: Path, *, red: int = 10, blue: int = 10, purple: int = 4) -> Path:
    """A flat folder of unlabeled SIDE images: r*.png, b*.png and the uncertain p*.png. Global
    average pooling and a linear head make a half-and-half image's logits the mean of a red and
    a blue image's, so a red/blue model is unsure of exactly those, whatever its features."""
    for i in range(red):
        write_image(root / f"r{i}.png", RED, size=SIDE)
    for i in range(blue):
        write_image(root / f"b{i}.png", BLUE, size=SIDE)
    for i in range(purple):
        write_half_and_half(root / f"p{i}.png", seed=i)
    return root


def write_half_and_half(path: Path, seed: int = 0) -> Path:
    """A SIDE image, red on the left half and blue on the right, with write_image's noise."""
    w, h = SIDE
    rng = np.random.default_rng(seed)
    colours = np.where(np.arange(w)[None, :, None] < w // 2, RED, BLUE)  # (1, W, 3)
    pixels = np.clip(colours + rng.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


COLOURS = {"red": (210, 40, 40), "green": (40, 190, 60), "blue": (40, 60, 210), "yellow": (220, 210, 40)}


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


def held_out(base: Path) -> Path:
    """60 colour images the colour models never saw (another seed), for agreement checks."""
    root = base / "held_out"
    return root if root.is_dir() else colour_images(root, per_class=15, seed=1)


# ----------------------------------------------------------------------------- untrained models

CLASSES = ["cat", "dog", "fox"]


def tiny_classifier(name: str, size: int = 32, classes: list[str] = CLASSES) -> Classifier:
    """An untrained Classifier of `name` at `size` px (seed 0); ViTs get 8 px patches (a 4x4
    grid at 32 px)."""
    torch.manual_seed(0)
    kwargs = {"patch_size": 8} if name == VIT else {}
    model = create_model(name, num_classes=len(classes), img_size=size, **kwargs)
    config = BundleConfig.for_model(architecture=name, class_names=list(classes),
                                preprocess=Preprocess(img_size=size), model_kwargs=kwargs)
    return Classifier(model, config, torch.device("cpu"))


def random_weights(path: Path, name: str, seed: int = 0) -> Path:
    """A safetensors state dict of a randomly initialised `name` with 10 classes (the stand-in
    for ImageNet weights; ViTs at 32 px)."""
    torch.manual_seed(seed)
    net = timm.create_model(name, num_classes=10, **({"img_size": 32} if name == VIT else {}))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path)
    return path


# ----------------------------------------------------------------------------- trained bundles

# clarivis.train settings of every tiny run: one epoch at 32 px on the CPU, no worker processes.
TINY_TRAIN: dict[str, Any] = {"epochs": 1, "batch_size": 8, "workers": 0, "img_size": 32, "device": "cpu"}


def train_red_blue(root: Path, arch: str = CNN, *, per_class: int = 8, size=(24, 24),
                   nested: bool = True, **settings: Any) -> TrainResult:
    """`arch` trained on write_images(root/train) into root/run; `settings` go to clarivis.train
    over TINY_TRAIN (a setting of None: clarivis's own default)."""
    data = write_images(root / "train", per_class, size=size, nested=nested)
    chosen = {k: v for k, v in {**TINY_TRAIN, **settings}.items() if v is not None}
    return clarivis.train(data, out=root / "run", model=arch, **chosen)


def train_bundle(root: Path) -> Path:
    """test_resnet at 32 px, one epoch on 17 red/blue images (a couple of seconds on a CPU): the
    bundle folder."""
    return train_red_blue(root).bundle_dir


def trained_bundle(base: Path, arch: str) -> Path:
    """A bundle of `arch` at 32 px trained for 4 epochs on 4 x 30 colour images (a few seconds),
    in the run folder base/run with its split.json."""
    data = colour_images(base / "data", per_class=30, seed=0)
    with redirect_stderr(io.StringIO()):
        result = clarivis.train(data, out=base / "run", model=arch, epochs=4, batch_size=16, workers=0,
                                img_size=32, device="cpu", report=False, console=Console(file=io.StringIO()))
    return result.bundle_dir


# ----------------------------------------------------------------------------- multi-label
# Grey 32 px images with a coloured patch in some of three corners: "red" top-left, "green"
# top-right, "blue" bottom-left; an image holds any set of them (none too). A tiny model learns
# it in a few epochs; a manifest path,labels lists each image's set joined by ';'.
ML_PATCHES = {"red": ((210, 40, 40), (0, 0)), "green": ((40, 190, 60), (16, 0)),
              "blue": ((40, 60, 210), (0, 16))}
ML_CLASSES = sorted(ML_PATCHES)


def write_multilabel(root: Path, n: int = 48, *, seed: int = 0, split: str | None = None,
                     extra_columns: dict[str, list[str]] | None = None) -> Path:
    """n images under root/images and root/labels.csv (path,labels[,split][,extra...]); each
    label is present in an image with probability 0.5, independently. Returns the CSV."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    header = ["path", "labels"] + (["split"] if split else []) + list(extra_columns or {})
    lines = [",".join(header)]
    for i in range(n):
        present = [name for name in ML_CLASSES if rng.random() < 0.5]
        arr = np.clip(128 + rng.integers(-20, 20, (32, 32, 3)), 0, 255)
        for name in present:
            colour, (x, y) = ML_PATCHES[name]
            arr[y:y + 16, x:x + 16] = np.clip(np.array(colour) + rng.integers(-20, 20, (16, 16, 3)), 0, 255)
        Image.fromarray(arr.astype(np.uint8)).save(root / "images" / f"img{i:03d}.png")
        row = [f"images/img{i:03d}.png", ";".join(present)] + ([split] if split else [])
        row += [values[i] for values in (extra_columns or {}).values()]
        lines.append(",".join(row))
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root / "labels.csv"


def multilabel_classifier(name: str = CNN, size: int = 32, classes: list[str] = ML_CLASSES, *,
                          thresholds: list[float] | None = None) -> Classifier:
    """An untrained multi-label Classifier (seed 0; ViTs in 8 px patches); thresholds default to
    0.5 each, temperatures to 1."""
    clf = tiny_classifier(name, size, classes)
    clf.config = clf.config.updated(task="multilabel", thresholds=thresholds or [0.5] * len(classes),
                                    temperatures=[1.0] * len(classes))
    return clf


def multilabel_bundle(folder: Path, name: str = CNN, **kwargs: Any) -> Path:
    """multilabel_classifier(name, **kwargs) saved as a bundle in `folder`."""
    from clarivis.models.bundle import save_bundle

    clf = multilabel_classifier(name, **kwargs)
    return save_bundle(folder, clf.model, clf.config)


_TRAINED_ML: dict[str, Path] = {}


def trained_multilabel(base: Path, arch: str = CNN) -> Path:
    """A multi-label bundle of `arch` trained 8 epochs on write_multilabel(base/data, 120) (a few
    seconds), thresholds and temperatures fitted; cached per session."""
    if arch not in _TRAINED_ML:
        data = write_multilabel(base / arch / "data", 120)
        with redirect_stderr(io.StringIO()):
            result = clarivis.train(data, out=base / arch / "run", model=arch, epochs=8,
                                    batch_size=16, workers=0, img_size=32, device="cpu", report=False,
                                    val_fraction=0.3, console=Console(file=io.StringIO()))
        _TRAINED_ML[arch] = result.bundle_dir
    return _TRAINED_ML[arch]


_EXPORTS: dict[str, tuple[Path, object]] = {}


def exported(base: Path, arch: str, *, int8: bool) -> tuple[Path, object]:
    """(bundle folder, ExportResult) of `trained_bundle(base / arch)`, trained and exported once
    per session and checked on the held-out images."""
    if arch not in _EXPORTS:
        from clarivis.export import export_bundle  # onnx and onnxruntime load in the tests that export

        bundle = trained_bundle(base / arch, arch)
        _EXPORTS[arch] = bundle, export_bundle(bundle, int8=int8, check_data=held_out(base), device="cpu")
    return _EXPORTS[arch]


# ----------------------------------------------------------------------------- tiny CLIP
# open_clip is the 'zeroshot' extra: imported by the two functions that need it, so the rest of
# this module (and every test) imports without it.

# Image tower: 32 px in 8 px patches (a 4x4 grid), width 64, 2 blocks of 2 heads (head_width 32);
# text tower: open_clip's real BPE vocabulary and 77-token context (its SimpleTokenizer's),
# width 64, 2 blocks; a 32-d joint embedding. About 3.4M parameters, mostly token embeddings.
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
LABELS = ["a red square", "a green circle", "a blue triangle"]
# The folders of clip_images: LABELS' colours, named with underscores as users name folders.
CLIP_COLOURS = {"red_square": (210, 40, 40), "green_circle": (40, 190, 60), "blue_triangle": (40, 60, 210)}


@dataclass
class TinyClip:
    config: Path  # open_clip model-config JSON
    weights: Path  # safetensors checkpoint of the whole CLIP (both towers)


def write_tiny_clip(folder: Path, *, name: str = "tiny-clip", seed: int = 0) -> TinyClip:
    """The config JSON and weights file in `folder`; logit_scale set to 100 as in released CLIPs."""
    import open_clip

    folder.mkdir(parents=True, exist_ok=True)
    config, weights = folder / f"{name}.json", folder / f"{name}.safetensors"
    if not weights.exists():
        config.write_text(json.dumps(TINY_CLIP))
        torch.manual_seed(seed)
        model = open_clip.CLIP(**TINY_CLIP)
        with torch.no_grad():
            model.logit_scale.fill_(math.log(100.0))
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return TinyClip(config, weights)


def full_clip(config: Path, weights: Path):
    """The saved model through open_clip's own loader: the reference the tests compare with."""
    import open_clip

    model = open_clip.CLIP(**json.loads(config.read_text()))
    open_clip.load_checkpoint(model, str(weights))
    return model.eval()


def clip_images(root: Path) -> Path:
    """root/<class>/*.png: the 3 CLIP_COLOURS classes x 10 noisy colour fields of 24-40 px."""
    for name, colour in CLIP_COLOURS.items():
        for i in range(10):
            write_image(root / name / f"{i}.png", colour, size=(24 + i, 40 - i))
    return root
