"""Heat maps for a Classifier's model inputs, by any method: the one call the report and the
service make. Pixels are the uint8 model input (resized as predict does); normalisation is
predict's too, so the map explains exactly the prediction predict would make."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from clarivis.errors import ClarivisError
from clarivis.explain.attribution import ig_maps
from clarivis.explain.cam import CAM_METHODS, cam_maps

METHODS: tuple[str, ...] = (*CAM_METHODS, "ig")

# Grad-CAM hooks and the frozen parameters belong to the whole model object: two explanations of
# one model at once would read each other's activations, so they take turns.
_MODEL_LOCK = threading.Lock()


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ClarivisError(f"unknown explanation method '{method}'; choose one of {', '.join(METHODS)}")
    return method


def heatmaps(
    clf, pixels: torch.Tensor | np.ndarray, *, method: str = "gradcam",
    targets: Sequence[int] | torch.Tensor | np.ndarray | None = None, batch_size: int = 16,
) -> np.ndarray:
    """uint8 (N, 3, S, S) model-input pixels -> float32 (N, S, S) maps in [0, 1] of the evidence
    for class `targets[i]` (default: the predicted class)."""
    check_method(method)
    pixels = torch.as_tensor(pixels)
    size = clf.config.preprocess.img_size
    if pixels.dtype != torch.uint8 or pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, size, size):
        raise ClarivisError(
            f"heatmaps takes uint8 (N, 3, {size}, {size}) model-input pixels, got {pixels.dtype} "
            f"{tuple(pixels.shape)}; resize each image with the Classifier's _resize first"
        )
    if targets is not None:
        targets = torch.as_tensor(targets, dtype=torch.long).flatten()
        if len(targets) != len(pixels):
            raise ClarivisError(f"got {len(targets)} targets for {len(pixels)} images; pass one each")
        if len(targets) and not 0 <= int(targets.min()) <= int(targets.max()) < len(clf.class_names):
            raise ClarivisError(f"targets are class indices, 0 to {len(clf.class_names) - 1}")
    maps = []
    with _MODEL_LOCK, _input_gradients_only(clf.model):
        for start in range(0, len(pixels), batch_size):
            x = clf.normalize(pixels[start:start + batch_size].to(clf.device))  # float, channels_last
            if targets is None:
                with torch.no_grad():
                    batch_targets = clf.model(x).argmax(dim=1).tolist()
            else:
                batch_targets = targets[start:start + batch_size].tolist()
            if method == "ig":
                maps.append(ig_maps(clf.model, x, batch_targets))
            else:
                maps.append(cam_maps(clf.model, x, batch_targets, method=method))
    return np.concatenate(maps) if maps else np.zeros((0, size, size), np.float32)


@contextmanager
def _input_gradients_only(model: nn.Module) -> Iterator[None]:
    """Parameters stop requiring gradients for the duration: the maps need gradients with
    respect to activations and inputs only, and no .grad is left behind on the weights."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
