"""Which device runs the model: the one the user asked for, checked, or the best one present."""

from __future__ import annotations

import torch

from clarivis.errors import ConfigError


def resolve_device(requested: str | None) -> torch.device:
    """CUDA when present, then Apple's MPS, else CPU; an explicit request must be available."""
    if requested:
        try:
            device = torch.device(requested)
        except RuntimeError:
            raise ConfigError(f"unknown device '{requested}'; use cpu, cuda, cuda:N or mps") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda asked for, but no CUDA GPU is visible; use --device cpu")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ConfigError("--device mps asked for, but MPS is not available; use --device cpu")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
