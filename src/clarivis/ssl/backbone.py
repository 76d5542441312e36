"""The backbone being pretrained: a headless timm model from the model factory, and its export as
RUN/backbone.safetensors: the backbone's own state dict with timm's key names and no head, which
`clarivis train DATA --model SAME --weights RUN/backbone.safetensors` loads (a fresh head is
added there). RUN/backbone.json says how it was made and which command uses it."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from clarivis import runs
from clarivis.data.transforms import Preprocess
from clarivis.fileio import atomic_write
from clarivis.models.factory import create_model, pretrained_cfg
from clarivis.ssl.config import PretrainConfig

BACKBONE_NAME = runs.BACKBONE_WEIGHTS
INFO_NAME = runs.BACKBONE_INFO


def create_backbone(config: PretrainConfig) -> nn.Module:
    """timm model with num_classes=0: forward gives pooled features (B, D), D = num_features."""
    return create_model(config.model, num_classes=0, img_size=config.img_size,
                        weights=config.weights, **config.model_kwargs)


def normalization(model: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The architecture's mean/std: what `clarivis train` normalises its inputs with."""
    cfg = pretrained_cfg(model)
    return tuple(cfg.get("mean", Preprocess.mean)), tuple(cfg.get("std", Preprocess.std))


def backbone_state(backbone: nn.Module) -> dict[str, torch.Tensor]:
    # contiguous: channels_last weights are strided views safetensors cannot store as they are.
    return {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}


def save_backbone(backbone: nn.Module, run_dir: Path, info: dict) -> Path:
    """Write the weights (atomically: a reader never sees half a file) and their description."""
    path = run_dir / BACKBONE_NAME
    atomic_write(path, lambda tmp: save_file(backbone_state(backbone), tmp,
                                             metadata={"format": "pt", "architecture": info["model"]}))
    (run_dir / INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")
    return path


def train_command(config: PretrainConfig, path: Path, data: str = "LABELED_DIR") -> str:
    """The `clarivis train` line that fine-tunes this backbone: same model, size and kwargs."""
    parts = ["clarivis", "train", data, "--model", config.model, "--img-size", str(config.img_size),
             "--weights", str(path)]
    if config.model_kwargs:
        parts += ["--model-kwargs", ",".join(f"{k}={v}" for k, v in config.model_kwargs.items())]
    return " ".join(p if p == data else shlex.quote(p) for p in parts)
