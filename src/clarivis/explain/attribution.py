"""Integrated Gradients (captum) reduced to one heat map per image."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

IG_STEPS = 32  # Gauss-Legendre points on the path; captum's default 50 changes the maps little
FORWARD_BATCH = 128  # path points per forward pass: bounds the memory of the N x steps inputs
# Share of the total attribution mass kept unclipped: as captum's visualisation (outlier_perc=2),
# a few extreme pixels then do not turn the rest of the map black.
KEEP_MASS = 0.98


def ig_maps(model: nn.Module, x: torch.Tensor, targets: list[int], *, steps: int = IG_STEPS) -> np.ndarray:
    """Normalised (N, 3, S, S) input -> float32 (N, S, S) maps in [0, 1] for class `targets[i]`.
    The baseline is 0 after normalisation: the mean colour, which is also what letterbox padding
    holds, so padding gets no attribution."""
    from captum.attr import IntegratedGradients  # captum: imported when a map is drawn, not with explain

    ig = IntegratedGradients(lambda inputs: model(inputs.contiguous(memory_format=torch.channels_last)))
    with torch.enable_grad():
        attr = ig.attribute(
            x, baselines=torch.zeros_like(x), target=[int(t) for t in targets], n_steps=steps,
            internal_batch_size=max(FORWARD_BATCH, len(x)),
        )
    saliency = attr.detach().abs().sum(dim=1).float()  # (N, S, S): evidence of either sign
    return normalize_maps(saliency).cpu().numpy()


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """(N, H, W) non-negative -> [0, 1]: divided by the value below which KEEP_MASS of each map's
    mass lies (captum's cumulative-sum threshold), then clipped."""
    flat = maps.flatten(1)
    values, _ = flat.sort(dim=1)
    cumulative = values.cumsum(dim=1)
    index = (cumulative < cumulative[:, -1:] * KEEP_MASS).sum(dim=1, keepdim=True)
    threshold = values.gather(1, index.clamp(max=flat.shape[1] - 1))  # (N, 1)
    scaled = flat / threshold.clamp(min=torch.finfo(flat.dtype).tiny)
    return scaled.clamp(0.0, 1.0).view_as(maps)
