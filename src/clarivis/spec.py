"""The ModelBundle spec, torch-free: what a bundle folder holds (file names), its config.json
schema (`BundleConfig`), and how an image becomes a model input (`Preprocess`). One definition
read by models/ (torch), export/, the torch-free runtime/ and serve/; the on-disk contract
between every stage. Standard library only: the runtime distribution ships this module."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from clarivis.errors import ModelError
from clarivis.fileio import sha256_hex

VERSION = "0.1.0"  # clarivis's version, written into every bundle
SCHEMA_VERSION = 1  # config.json's layout; a newer one than this code knows is refused

# ----------------------------------------------------------------------------- file names
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
ONNX_NAME = "model.onnx"  # fp32 export
INT8_ONNX_NAME = "model.int8.onnx"  # int8 export (static, calibrated on images)
# An int8 model whose parity check failed is kept under this name to inspect, never served.
FAILED_INT8_NAME = "model.int8.failed-check.onnx"
BUNDLE_DIR_NAME = "model"  # a run folder holds its bundle here (runs/NAME/model)

# Architecture names with this prefix are CLIP image towers (models/clip.py), e.g. open_clip:ViT-B-32
CLIP_PREFIX = "open_clip:"

RESIZE_MODES = ("pad", "crop", "squash")
# multiclass: one label an image, softmax outputs. multilabel: any set of labels (none too),
# one sigmoid output a class, each with its own decision threshold and temperature.
TASKS = ("multiclass", "multilabel")
INTERPOLATION_NAMES = ("bilinear", "bicubic", "nearest")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes a model input; saved in the bundle's config.json. The torch
    pipeline (data/transforms.py) and the numpy one (runtime/preprocess.py) both follow it."""

    img_size: int  # square model input side, pixels
    resize_mode: str = "pad"  # pad (letterbox) | crop (center) | squash
    mean: tuple[float, float, float] = IMAGENET_MEAN  # per channel, on the 0..1 scale
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    # crop mode only: the share of the resized shorter side kept by the centre crop (timm's
    # crop_pct: 0.875 resizes to floor(S / 0.875) then crops S); 1.0 crops nothing more.
    crop_pct: float = 1.0
    # DICOM only: the VOI window (center, width) in modality units (e.g. Hounsfield units) every
    # DICOM file is decoded with; None: each file's own window or VOI LUT (data/dicom.py).
    window: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"unknown resize mode {self.resize_mode!r}; one of {', '.join(RESIZE_MODES)}")
        if self.interpolation not in INTERPOLATION_NAMES:
            raise ValueError(f"unknown interpolation {self.interpolation!r}")
        if self.window is not None:
            object.__setattr__(self, "window", check_window(self.window))

    @property
    def crop_resize_size(self) -> int:
        """Shorter side after the resize, before the centre crop (crop mode)."""
        return max(self.img_size, math.floor(self.img_size / self.crop_pct))

    @property
    def fill(self) -> tuple[int, int, int]:
        """The letterbox colour, 0..255: the mean, which normalises to zero."""
        return tuple(round(m * 255) for m in self.mean)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        return cls(
            img_size=int(d["img_size"]),
            resize_mode=d.get("resize_mode", "pad"),
            mean=tuple(float(m) for m in d.get("mean", IMAGENET_MEAN)),
            std=tuple(float(s) for s in d.get("std", IMAGENET_STD)),
            interpolation=d.get("interpolation", "bilinear"),
            crop_pct=float(d.get("crop_pct", 1.0)),
            window=d.get("window"),
        )


def check_window(window: Any) -> tuple[float, float]:
    """A DICOM window as (center, width) floats; ValueError unless 2 numbers with width >= 1
    (the smallest a linear DICOM window may have, PS3.3 C.11.2.1.2.1)."""
    values = tuple(float(v) for v in window)
    if len(values) != 2 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"a window is 2 finite numbers, center and width (got {list(window)})")
    if values[1] < 1:
        raise ValueError(f"a window's width must be at least 1 (got {values[1]:g})")
    return values


@dataclass
class BundleConfig:
    """config.json of a ModelBundle. Keys this version does not know are kept in `extra` and
    written back (e.g. `export`, the ONNX export's record), so older code never drops them."""

    architecture: str  # timm model name (or a registered one: clip:..., airnet_s)
    class_names: list[str]  # index i is the label of output i
    input_size: tuple[int, int, int]  # (channels, height, width)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_classes: int = 0  # len(class_names); 0 in the constructor means "count them"
    interpolation: str = "bilinear"
    resize_mode: str = "pad"  # pad | crop | squash, see Preprocess
    crop_pct: float = 1.0  # crop mode: centre share of the resized shorter side (timm's crop_pct)
    # DICOM: [center, width] applied to every DICOM file (see Preprocess.window); None: each
    # file's own. Written only when set, so bundles without DICOM look as before.
    window: list[float] | None = None
    temperature: float = 1.0  # softmax temperature; 1.0 until calibration fits it
    task: str = "multiclass"  # see TASKS
    # multilabel only, one value a class (output order), fitted on val at the end of training:
    # class i's probability is sigmoid(logit_i / temperatures[i] + biases[i]) (Platt scaling: a
    # loss like ASL leaves every logit shifted, which a temperature alone cannot undo), and the
    # class is predicted when it is >= thresholds[i]. None: 0.5, 1.0 and 0.0 (not fitted).
    thresholds: list[float] | None = None
    temperatures: list[float] | None = None
    biases: list[float] | None = None
    calibration: dict[str, Any] = field(default_factory=dict)  # how T was fitted: ECE before/after
    # Open-set rejection fitted on val: {score, threshold, accept_rate}; None: never rejects.
    ood: dict[str, Any] | None = None
    # What predictions on validation look like (calibrated): the reference a monitor compares
    # live traffic with. {num_images, class_distribution: [C floats], confidence_histogram:
    # {edges: [11], counts: [10]}}; empty until training fits it.
    baseline: dict[str, Any] = field(default_factory=dict)
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # extra factory kwargs (img_size)
    training: dict[str, Any] = field(default_factory=dict)  # fingerprint, epochs, best metric
    schema_version: int = SCHEMA_VERSION
    clarivis_version: str = VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # keys of newer or other writers

    def __post_init__(self) -> None:
        self.class_names = [str(c) for c in self.class_names]
        self.num_classes = int(self.num_classes) or len(self.class_names)
        self.input_size = tuple(int(v) for v in self.input_size)
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        self.crop_pct, self.temperature = float(self.crop_pct), float(self.temperature)
        if self.window is not None:
            self.window = list(check_window(self.window))
        if len(self.input_size) != 3 or len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("input_size, mean and std need 3 values each")
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; one of {', '.join(TASKS)}")
        for name in ("thresholds", "temperatures", "biases"):
            values = getattr(self, name)
            if values is not None:
                if len(values) != self.num_classes:
                    raise ValueError(f"{name} needs one value a class ({self.num_classes})")
                setattr(self, name, [float(v) for v in values])

    @property
    def multilabel(self) -> bool:
        return self.task == "multilabel"

    def label_thresholds(self) -> list[float]:
        """multilabel: each class's decision threshold on its calibrated probability."""
        return list(self.thresholds) if self.thresholds is not None else [0.5] * self.num_classes

    def label_temperatures(self) -> list[float]:
        """multilabel: each class's sigmoid temperature (logit_i / T_i)."""
        if self.temperatures is not None:
            return list(self.temperatures)
        return [self.temperature] * self.num_classes

    def label_biases(self) -> list[float]:
        """multilabel: each class's logit shift after its temperature (0.0 when not fitted)."""
        return list(self.biases) if self.biases is not None else [0.0] * self.num_classes

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(img_size=self.input_size[1], resize_mode=self.resize_mode, mean=self.mean,
                          std=self.std, interpolation=self.interpolation, crop_pct=self.crop_pct,
                          window=tuple(self.window) if self.window is not None else None)

    @classmethod
    def for_model(cls, *, architecture: str, class_names: list[str], preprocess: Preprocess,
                  **values: Any) -> BundleConfig:
        """A new bundle's config: the preprocessing's fields spread into the schema's."""
        return cls(architecture=architecture, class_names=list(class_names),
                   input_size=(3, preprocess.img_size, preprocess.img_size), mean=preprocess.mean,
                   std=preprocess.std, interpolation=preprocess.interpolation,
                   resize_mode=preprocess.resize_mode, crop_pct=preprocess.crop_pct,
                   window=list(preprocess.window) if preprocess.window is not None else None, **values)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> BundleConfig:
        """Parsed config.json -> BundleConfig; ValueError/TypeError/KeyError when it is damaged."""
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in raw.items() if k in known}
        return cls(**values, extra={k: v for k, v in raw.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written as config.json (unknown keys included, as read)."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        if values["window"] is None:
            del values["window"]  # the file's own window: config.json as before DICOM windows
        values = json.loads(json.dumps(values))  # tuples -> lists, as JSON holds them
        return {**values, **self.extra}

    def updated(self, **changes: Any) -> BundleConfig:
        """A copy with `changes` applied; keys outside the schema go to `extra`."""
        known = {f.name for f in fields(self)} - {"extra"}
        extra = {**self.extra, **{k: v for k, v in changes.items() if k not in known}}
        return replace(self, **{k: v for k, v in changes.items() if k in known}, extra=extra)


def resolve_bundle_path(path: str | Path) -> Path:
    """Accept the bundle folder itself or the run folder that contains it as model/."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelError(f"model folder {path} does not exist; pass a runs/NAME/model folder")
    nested = path / BUNDLE_DIR_NAME
    if path.is_dir() and not (path / CONFIG_NAME).is_file() and (nested / CONFIG_NAME).is_file():
        return nested
    if not path.is_dir() or not (path / CONFIG_NAME).is_file():
        raise ModelError(f"{path} is not a ModelBundle (no {CONFIG_NAME}); pass the model/ folder of a run")
    return path


def read_bundle_config(path: str | Path) -> BundleConfig:
    """The bundle's config.json, checked: the one parse every reader (torch or not) uses."""
    folder = resolve_bundle_path(path)
    try:
        config = BundleConfig.from_dict(json.loads((folder / CONFIG_NAME).read_text()))
    except (json.JSONDecodeError, ValueError, TypeError, KeyError) as err:
        raise ModelError(
            f"{folder / CONFIG_NAME} is damaged ({err.__class__.__name__}); retrain or restore it"
        ) from None
    if config.schema_version > SCHEMA_VERSION:
        raise ModelError(f"{folder} was written by a newer clarivis (schema "
                         f"{config.schema_version}); upgrade")
    return config


def bundle_config_text(config: BundleConfig) -> str:
    """config.json's text, as every writer formats it."""
    return json.dumps(config.to_dict(), indent=2)


def bundle_version(path: str | Path) -> str:
    """A short, stable identity of the bundle's contents (config and weights): the same files
    give the same version on every machine; retraining gives a new one. 12 hex digits."""
    folder = resolve_bundle_path(path)
    if not (folder / WEIGHTS_NAME).is_file():
        raise ModelError(f"{folder} has no {WEIGHTS_NAME}; the bundle is incomplete, retrain")
    return sha256_hex(folder / CONFIG_NAME, folder / WEIGHTS_NAME)[:12]
