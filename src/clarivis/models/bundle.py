"""The ModelBundle: a folder with config.json + model.safetensors, loadable with no pickle.
It is the contract between training and every later stage (evaluate, predict, export, serve)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from clarivis.errors import ModelError
from clarivis.fileio import atomic_write
from clarivis.models.factory import create_model
from clarivis.spec import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    BundleConfig,
    bundle_config_text,
    read_bundle_config,
    resolve_bundle_path,
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
    text = bundle_config_text(config)
    atomic_write(folder / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text))
    return folder


def update_bundle_config(folder: str | Path, **changes: Any) -> BundleConfig:
    """Rewrite config.json with `changes` applied (atomically; the weights are untouched)."""
    folder = resolve_bundle_path(folder)
    config = read_bundle_config(folder).updated(**changes)
    text = bundle_config_text(config)
    atomic_write(folder / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text))
    return config


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, BundleConfig]:
    """Rebuild the model from config.json and load its weights (safetensors only)."""
    folder = resolve_bundle_path(path)
    config = read_bundle_config(folder)
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

