"""Typed settings of a self-supervised pretraining run: defaults, then a YAML file, then flags
(the same order as training). The resolved settings are written into the run as config.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from clarivis.config import read_yaml, validation_message
from clarivis.errors import ConfigError

Method = Literal["simclr", "byol", "dino"]
METHODS: tuple[str, ...] = ("simclr", "byol", "dino")


class PretrainConfig(BaseModel):
    """Everything that defines a pretraining run. `None` means "chosen from the data and device"."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    data: str = Field(description="folder of images (flat or in subfolders) or CSV with a path column")
    out: str | None = Field(None, description="run folder; default runs/<data>-<method>-<time>")

    # Model: a timm backbone, saved without its head as RUN/backbone.safetensors.
    model: str | None = None  # None: the model `clarivis train` picks for this size and device
    # SimCLR: the simplest of the three (one network, no momentum target to tune). BYOL and DINO
    # win on long runs (lightly's CIFAR-10 table, 200 epochs, kNN accuracy: BYOL 0.87, DINO
    # 0.87, SimCLR 0.82); pick them when the budget allows.
    method: Method = "simclr"
    weights: str | None = None  # start from these weights (a bundle's or another backbone's)
    img_size: int | None = Field(None, ge=16, le=1024)  # None: typical size of the images
    model_kwargs: dict[str, int | float | bool | str] = Field(default_factory=dict)  # to timm

    # Optimisation.
    # Self-supervised features keep improving for hundreds of epochs (lightly's CIFAR-10
    # benchmarks run 200 and 800); 100 is a useful middle. Bound the wall time with time_limit.
    epochs: int = Field(100, ge=1)
    # None: 256 for small images on larger datasets, else about 16 steps an epoch (as training
    # picks it). Contrastive losses want many negatives, but a batch larger than the data is moot.
    batch_size: int | None = Field(None, ge=2)
    # None: what `clarivis train` picks for AdamW, 2e-3 at a batch of 64 scaled by sqrt(batch/64),
    # a tenth of it when starting from --weights. Measured: SimCLR, resnet18, 4 min on 5,000
    # CIFAR-10 images, linear probe 0.353 at 2e-3 against 0.331 at 5e-4 (random weights: 0.195).
    # AdamW, not LARS: LARS is made for batches of thousands; at the 64-256 used here AdamW is
    # the simpler choice and serves CNNs and ViTs alike (DINO trains ViTs with AdamW).
    lr: float | None = Field(None, gt=0.0)
    weight_decay: float = Field(0.05, ge=0.0)  # AdamW's standard; DINO starts at 0.04
    warmup_epochs: float = Field(1.0, ge=0.0)  # linear warm-up, then cosine to 1% of the peak

    # Runtime.
    workers: int | None = Field(None, ge=0)  # None: 0 on 2 cores (images in RAM), else cores-1
    device: str | None = None  # None: cuda, then mps, then cpu
    seed: int = 0  # initial weights, views and order: the same seed repeats the run
    # Minutes for the whole run; the lr (and the momentum of BYOL/DINO's teacher) follow the
    # clock, so the schedule has annealed when time is up; the backbone is written then.
    time_limit: float | None = Field(None, gt=0.0)

    @model_validator(mode="after")
    def _check(self) -> PretrainConfig:
        taken = {"img_size": "--img-size", "num_classes": "pretraining (no head)",
                 "pretrained": "--weights"}
        for key in self.model_kwargs.keys() & taken.keys():
            raise ValueError(f"model_kwargs may not set {key}; it comes from {taken[key]}")
        return self


def build_pretrain_config(yaml_path: str | Path | None = None, **overrides: Any) -> PretrainConfig:
    """Defaults, then the YAML file, then the overrides given."""
    values: dict[str, Any] = {}
    if yaml_path is not None:
        values.update(read_yaml(yaml_path))
    values.update(overrides)
    return validate_pretrain_config(values)


def validate_pretrain_config(values: dict[str, Any]) -> PretrainConfig:
    method = values.get("method")
    if method is not None and method not in METHODS:
        raise ConfigError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
    try:
        return PretrainConfig(**values)
    except ValidationError as err:
        raise ConfigError(validation_message(err)) from None
