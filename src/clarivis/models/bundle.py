"""The ModelBundle: a folder with config.json + model.safetensors, loadable with no pickle.
It is the contract between training and every later stage (evaluate, predict, export, serve)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.torch import load_file, save_file
from torch import nn

from clarivis import __version__
from clarivis.data.transforms import Preprocess
from clarivis.errors import ModelError
from clarivis.fileio import atomic_write
from clarivis.models.factory import create_model

SCHEMA_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class BundleConfig(BaseModel):
    """config.json of a ModelBundle."""

    model_config = ConfigDict(protected_namespaces=(), extra="allow")

    schema_version: int = SCHEMA_VERSION
    clarivis_version: str = __version__
    architecture: str  # timm model name
    num_classes: int
    class_names: list[str]  # index i is the label of output i
    input_size: tuple[int, int, int]  # (channels, height, width)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    resize_mode: str = "pad"  # pad | crop | squash, see data/transforms.py
    crop_pct: float = 1.0  # crop mode: centre share of the resized shorter side (timm's crop_pct)
    temperature: float = 1.0  # softmax temperature; 1.0 until calibration fits it
    calibration: dict[str, Any] = Field(default_factory=dict)  # how T was fitted: ECE before/after
    # Open-set rejection fitted on val: {score, threshold, accept_rate}; None: never rejects.
    ood: dict[str, Any] | None = None
    # What predictions on validation look like (calibrated): the reference a monitor compares
    # live traffic with. {num_images, class_distribution: [C floats], confidence_histogram:
    # {edges: [11], counts: [10]}}; empty until training fits it.
    baseline: dict[str, Any] = Field(default_factory=dict)
    model_kwargs: dict[str, Any] = Field(default_factory=dict)  # extra timm kwargs (img_size)
    training: dict[str, Any] = Field(default_factory=dict)  # fingerprint, epochs, best metric

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(
            img_size=self.input_size[1],
            resize_mode=self.resize_mode,
            mean=self.mean,
            std=self.std,
            interpolation=self.interpolation,
            crop_pct=self.crop_pct,
        )


def make_bundle_config(
    *, architecture: str, class_names: list[str], preprocess: Preprocess, **extra: Any
) -> BundleConfig:
    return BundleConfig(
        architecture=architecture,
        num_classes=len(class_names),
        class_names=list(class_names),
        input_size=(3, preprocess.img_size, preprocess.img_size),
        mean=preprocess.mean,
        std=preprocess.std,
        interpolation=preprocess.interpolation,
        resize_mode=preprocess.resize_mode,
        crop_pct=preprocess.crop_pct,
        **extra,
    )


def save_bundle(folder: str | Path, model: nn.Module, config: BundleConfig) -> Path:
    """Write weights then config, each atomically, so a reader never sees a half-written file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # A model that needs more than its name to be rebuilt says what (a CLIP classifier: its
    # open_clip config); load_bundle passes config.model_kwargs back to create_model.
    extra = getattr(model, "bundle_model_kwargs", None)
    if extra:
        config.model_kwargs = {**config.model_kwargs, **extra}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(folder / WEIGHTS_NAME, lambda tmp: save_file(state, tmp))
    text = json.dumps(config.model_dump(mode="json"), indent=2)
    atomic_write(folder / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text))
    return folder


def update_bundle_config(folder: str | Path, **changes: Any) -> BundleConfig:
    """Rewrite config.json with `changes` applied (atomically; the weights are untouched)."""
    folder = resolve_bundle_path(folder)
    config = load_bundle_config(folder).model_copy(update=changes)
    text = json.dumps(config.model_dump(mode="json"), indent=2)
    atomic_write(folder / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text))
    return config


def bundle_version(path: str | Path) -> str:
    """A short, stable identity of the bundle's contents (weights and config): the same files
    give the same version on every machine; retraining gives a new one."""
    folder = resolve_bundle_path(path)
    digest = hashlib.sha256()
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        with open(folder / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:12]


def resolve_bundle_path(path: str | Path) -> Path:
    """Accept the bundle folder itself or the run folder that contains it as model/."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelError(f"model folder {path} does not exist; pass a runs/NAME/model folder")
    if path.is_dir() and not (path / CONFIG_NAME).is_file() and (path / "model" / CONFIG_NAME).is_file():
        return path / "model"
    if not path.is_dir() or not (path / CONFIG_NAME).is_file():
        raise ModelError(
            f"{path} is not a ModelBundle (no {CONFIG_NAME}); pass the model/ folder of a run"
        )
    return path


def load_bundle_config(path: str | Path) -> BundleConfig:
    folder = resolve_bundle_path(path)
    try:
        raw = json.loads((folder / CONFIG_NAME).read_text())
        config = BundleConfig(**raw)
    except (json.JSONDecodeError, ValidationError, TypeError) as err:
        raise ModelError(
            f"{folder / CONFIG_NAME} is damaged ({err.__class__.__name__}); retrain or restore it"
        ) from None
    if config.schema_version > SCHEMA_VERSION:
        raise ModelError(
            f"{folder} was written by a newer clarivis (schema {config.schema_version}); upgrade"
        )
    return config


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, BundleConfig]:
    """Rebuild the model from config.json and load its weights (safetensors only)."""
    folder = resolve_bundle_path(path)
    config = load_bundle_config(folder)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise ModelError(f"{folder} has no {WEIGHTS_NAME}; the bundle is incomplete, retrain")
    model = create_model(
        config.architecture, num_classes=config.num_classes, img_size=config.input_size[1],
        **{k: v for k, v in config.model_kwargs.items() if k != "img_size"},
    )
    try:
        model.load_state_dict(load_file(str(weights)))
    except (RuntimeError, OSError) as err:
        raise ModelError(f"{weights} does not match {config.architecture}: {err!s:.200}") from None
    return model.to(device).eval(), config

