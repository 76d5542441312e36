"""Typed run configuration: defaults, then a YAML file, then flags. The resolved config is
written into every run folder as `config.yaml`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from clarivis.errors import ConfigError
from clarivis.spec import CLIP_PREFIX, check_window

ResizeMode = Literal["pad", "crop", "squash"]
AugmentPreset = Literal["none", "light", "randaugment", "trivialaugment"]


class TrainConfig(BaseModel):
    """Everything that defines a training run. `None` means "chosen from the data and device"."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    data: str = Field(description="image folder, split folder or CSV manifest")
    out: str | None = Field(None, description="run folder; default runs/<data>-<time>")

    # Model. None picks a default that trains in reasonable time on the device (see defaults.py).
    model: str | None = None
    pretrained: bool = False  # timm hub weights; needs a network
    weights: str | None = None  # local safetensors / state-dict file; head replaced to fit
    img_size: int | None = Field(None, ge=16, le=1024)  # None: typical size of the data
    # None: pad from scratch (keeps the whole image: a defect at the edge survives); crop when
    # fine-tuning pretrained weights, which were trained and evaluated on centre crops.
    resize_mode: ResizeMode | None = None
    # crop mode: share of the resized shorter side the centre crop keeps (timm's crop_pct).
    # None: the weights' own (0.875 for most ImageNet models) when fine-tuning, else 1.0.
    crop_pct: float | None = Field(None, gt=0.0, le=1.0)
    drop_rate: float = Field(0.0, ge=0.0, lt=1.0)
    model_kwargs: dict[str, int | float | bool | str] = Field(default_factory=dict)  # to timm
    # Freeze the backbone and fit a logistic-regression head on its embeddings (no epochs): the
    # best use of a few labels a class on pretrained, self-supervised or CLIP features.
    linear_probe: bool = False
    # open_clip models (--model open_clip:ViT-B-32 --weights CLIP_CHECKPOINT): the head starts as
    # CLIP's zero-shot classifier of the class names (folder names, '_' read as spaces), so
    # epoch 0 is already zero-shot CLIP and training only improves on it.
    init_from_text: bool = False
    text_templates: list[str] | None = None  # prompts with '{}' for the label; None: the default 7

    # Data.
    # auto: multi-label when the CSV manifest has a `labels` column; multilabel also reads a
    # `label` column as sets. Multi-label trains sigmoid outputs and fits a threshold a class.
    task: Literal["auto", "multiclass", "multilabel"] = "auto"
    label_sep: str = Field(";", min_length=1)  # joins the names in a multi-label cell
    # Multi-label loss: bce (binary cross-entropy), or asl (asymmetric loss, Ridnik et al. 2021:
    # down-weights the many easy negatives; see benchmarks/multilabel_mosaics.py for when it pays).
    multilabel_loss: Literal["bce", "asl"] = "bce"
    # Multi-label thresholds: None fits each class's threshold for the best F1 on val; a value
    # (e.g. 0.9) takes the lowest threshold whose val precision reaches it (fewer false alarms).
    threshold_precision: float | None = Field(None, gt=0.0, le=1.0)
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)  # 10% is enough to rank epochs, costs little
    # A manifest column (e.g. patient_id) whose groups stay whole in one split, so validation
    # never sees a patient that training saw; None: images are split one by one.
    group_by: str | None = None
    # DICOM files: decode with this VOI window (center, width) in modality units (e.g. 40,400 for
    # CT soft tissue) instead of each file's own; stored in the bundle, so every reader of the
    # model decodes alike. None: each file's window or VOI LUT (its min..max when it has none).
    window: tuple[float, float] | None = None
    balance: Literal["auto", "sampler", "none"] = "auto"  # auto: weighted sampling above 1.5:1
    augment: AugmentPreset = "light"  # flip + crop; strong presets pay off on longer runs
    hflip: bool = True  # off for data where left/right matters (text, digits, some scans)
    mixup: float = Field(0.0, ge=0.0)  # Mixup alpha; 0.2-0.8 helps long runs, hurts short ones
    cutmix: float = Field(0.0, ge=0.0)  # CutMix alpha; likewise
    workers: int | None = Field(None, ge=0)  # None: cores - 1, 0 on 2-core machines

    # Optimisation.
    epochs: int = Field(30, ge=1)  # early stopping usually ends runs sooner
    batch_size: int | None = Field(None, ge=1)  # None: 64, smaller for tiny datasets (see defaults)
    optimizer: Literal["adamw", "sgd"] = "adamw"  # AdamW: forgiving lr for CNNs and ViTs alike
    lr: float | None = Field(None, gt=0.0)  # None: 2e-3 AdamW / 0.1 SGD scratch, /10 fine-tune
    weight_decay: float = Field(0.05, ge=0.0)  # standard for AdamW on CNNs and ViTs
    momentum: float = Field(0.9, ge=0.0, lt=1.0)  # SGD only
    warmup_epochs: float | None = Field(None, ge=0.0)  # None: see defaults.pick_warmup_epochs
    # Fine-tuning: the peak lr is the head's; each layer group below gets layer_decay times the
    # lr of the one above it (timm's layer-wise lr decay), so generic early features move least.
    # Off (1.0) by default: on the short fine-tunes measured (defaults.FINE_TUNE_ADAMW_LR) it
    # only tied a flat lr, and it needs a higher peak lr to do that.
    layer_decay: float = Field(1.0, gt=0.0, le=1.0)
    min_lr_ratio: float = Field(0.01, ge=0.0, le=1.0)  # cosine floor as a fraction of peak lr
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)  # mild regulariser, better calibration
    grad_clip: float | None = Field(5.0, gt=0.0)  # only trims rare spikes at this size
    freeze_epochs: int = Field(0, ge=0)  # head-only warm-up epochs before full fine-tune
    ema: bool = False  # EMA pays off on long runs; on short ones it lags behind the weights
    ema_decay: float = Field(0.999, gt=0.0, lt=1.0)
    amp: bool = True  # mixed precision on CUDA only (bf16 when supported, else fp16)
    patience: int | None = Field(8, ge=1)  # epochs without val improvement before stopping

    # Speed.
    recipe: Literal["default", "fast"] = "default"  # fast: see RECIPES (short, large-batch runs)
    cache: bool | None = None  # uint8 tensor cache + batched augment; None: when it fits 4 GiB
    # channels_last: the layout oneDNN (CPU) and cuDNN tensor cores run convolutions fastest in;
    # measured on 2 CPU cores at 32 px: resnet18 +17%, mobilenetv3_small_050 +200%.
    channels_last: bool = True
    compile: bool = False  # torch.compile the model: faster steps on GPU after a warm-up minute
    sync_bn: bool = False  # DDP on GPUs: BatchNorm statistics over the global batch

    # Runtime.
    device: str | None = None  # None: cuda, then mps, then cpu
    seed: int = 0
    # Minutes for the whole run, data preparation and the last validation included; the lr
    # schedule follows the clock so it has annealed when the time is up, and training stops
    # then, mid-epoch if need be.
    time_limit: float | None = Field(None, gt=0.0)
    # Write RUN/report.html at the end (about a second: plots and a Grad-CAM gallery of 8).
    report: bool = True

    @field_validator("window")
    @classmethod
    def _check_window(cls, window: tuple[float, float] | None) -> tuple[float, float] | None:
        return None if window is None else check_window(window)

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.pretrained and self.weights:
            raise ValueError("use either --pretrained (hub) or --weights FILE, not both")
        taken = {"img_size": "--img-size", "num_classes": "the data's classes",
                 "drop_rate": "drop_rate in the YAML config", "pretrained": "--pretrained"}
        for key in self.model_kwargs.keys() & taken.keys():
            raise ValueError(f"model_kwargs may not set {key}; it comes from {taken[key]}")
        if self.freeze_epochs and self.freeze_epochs >= self.epochs:
            raise ValueError("freeze_epochs must be smaller than epochs")
        self._check_text_init()
        return self

    def _check_text_init(self) -> None:
        if self.text_templates is not None and any(t.count("{}") != 1 for t in self.text_templates):
            raise ValueError("each of text_templates needs exactly one '{}' where the label goes")
        if not self.init_from_text:
            return
        if not (self.model or "").startswith(CLIP_PREFIX):
            raise ValueError("--init-from-text needs an open_clip model, e.g. --model open_clip:ViT-B-32")
        if not (self.weights or self.pretrained):
            raise ValueError("--init-from-text needs the CLIP weights: --weights CLIP_CHECKPOINT "
                             "(or --pretrained, online)")
        if self.linear_probe:
            raise ValueError("use either --init-from-text or --linear-probe (the probe fits its own head)")


# Recipes: named sets of defaults, below the YAML file and the flags.
RECIPES: dict[str, dict[str, Any]] = {
    "default": {},
    # Small images, shortest wall time to a good accuracy, in the spirit of the CIFAR-10 speed
    # records (airbench): large batches (fewer, faster steps), Nesterov SGD with a high peak lr
    # and a short warm-up, stronger label smoothing, a fixed short schedule with no early stop.
    # Batch size (512 on large small-image datasets) and lr (linear in batch, capped at 0.4)
    # still adapt to the data: on a few hundred images a 512 batch would be one step an epoch.
    "fast": {
        "epochs": 12, "optimizer": "sgd", "momentum": 0.9, "weight_decay": 5e-4,
        "warmup_epochs": 1.0, "label_smoothing": 0.2, "patience": None, "min_lr_ratio": 0.0,
    },
}


def parse_kwargs(text: str | None) -> dict[str, int | float | bool | str]:
    """'patch_size=4,drop_path_rate=0.1' -> {'patch_size': 4, 'drop_path_rate': 0.1}."""
    result: dict[str, int | float | bool | str] = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--model-kwargs expects key=value pairs, got '{item}'")
        result[key.strip()] = yaml.safe_load(value.strip())
    return result


def parse_window(text: str | None) -> tuple[float, float] | None:
    """--window '40,400' (center,width) -> (40.0, 400.0); '' is not given."""
    if not (text or "").strip():
        return None
    try:
        center, width = (float(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"--window expects CENTER,WIDTH (two numbers, e.g. 40,400), got '{text}'") from None
    try:
        return check_window((center, width))
    except ValueError as err:
        raise ConfigError(f"--window: {err}; e.g. --window 40,400") from None


def build_config(yaml_path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Defaults, then the YAML file, then the overrides given (None is a value here, e.g.
    patience=None turns early stopping off; the CLI drops flags that were not given)."""
    values: dict[str, Any] = {}
    if yaml_path is not None:
        values.update(read_yaml(yaml_path))
    values.update(overrides)
    recipe = values.get("recipe", "default")
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe '{recipe}'; choose one of {', '.join(RECIPES)}")
    return validate_config({**RECIPES[recipe], **values})  # a recipe only changes defaults


def validate_config(values: dict[str, Any]) -> TrainConfig:
    try:
        return TrainConfig(**values)
    except ValidationError as err:
        raise ConfigError(validation_message(err)) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; pass an existing YAML file")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML ({err.__class__.__name__}); fix the syntax") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} must hold a mapping of settings, e.g. 'epochs: 10'")
    return loaded


def write_yaml(config: BaseModel, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


def validation_message(err: ValidationError) -> str:
    """Turn pydantic's multi-line report into one actionable line."""
    parts = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "config"
        flag = "--" + field.replace("_", "-")
        given = e.get("input")
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown setting '{field}'")
        elif e["loc"]:
            parts.append(f"{flag} {msg.lower()} (got {given!r})")
        else:
            parts.append(msg)
    return "invalid settings: " + "; ".join(parts)
