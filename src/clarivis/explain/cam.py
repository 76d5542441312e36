"""Grad-CAM and Grad-CAM++ (pytorch_grad_cam) for timm CNNs and ViTs alike: the layer to explain
and the reshape of ViT tokens to a feature map are chosen from the model, not by the user.

Grad-CAM of a layer that already gives (N, C, h, w) maps (every CNN) runs on captum's
LayerGradCam, with pytorch_grad_cam's normalisation (tests/explain/test_cam.py checks the maps
are the same): `import pytorch_grad_cam` brings scikit-learn, pandas, scipy and OpenCV (1.8 s of
CPU on 2 cores, half of torch + timm), which the report's gallery at the end of every training
run would otherwise pay; captum comes with matplotlib, which the report loads anyway."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clarivis.errors import ModelError
from clarivis.extras import needs

CAM_METHODS = ("gradcam", "gradcam++")  # pytorch_grad_cam's GradCAM and GradCAMPlusPlus

# The deepest feature stage is the class-specific one Grad-CAM is meant for, but a 1x1 or 2x2 map
# (resnet at 32-64 px: stride 32) can only say "somewhere in this half": below this many cells a
# side, the deepest stage that still has them is explained instead.
MIN_GRID = 4

Reshape = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class CamTarget:
    """The layer whose activations and gradients make the map, and how to bring them to NCHW."""

    name: str  # module path inside the model, e.g. "layer4" or "blocks.5.norm1"
    layer: nn.Module
    reshape: Reshape | None  # None: the layer's output already is (N, C, h, w)


# Chosen once per model object and input side (the choice needs a forward pass).
_CHOSEN: weakref.WeakKeyDictionary[nn.Module, dict[int, CamTarget]] = weakref.WeakKeyDictionary()


def cam_target(model: nn.Module, img_size: int) -> CamTarget:
    """The layer Grad-CAM explains in `model` for square inputs of `img_size` px."""
    per_size = _CHOSEN.setdefault(model, {})
    if img_size not in per_size:
        per_size[img_size] = _declared_target(model) or _vit_target(model) or _cnn_target(model, img_size)
    return per_size[img_size]


def _declared_target(model: nn.Module) -> CamTarget | None:
    """A model that is no timm model names its layer itself: cam_layer() -> (name, layer,
    reshape) or None (the CLIP classifier, models/clip.py)."""
    declared = getattr(model, "cam_layer", None)
    found = declared() if callable(declared) else None
    return CamTarget(*found) if found else None


def cam_maps(model: nn.Module, x: torch.Tensor, targets: list[int], *, method: str) -> np.ndarray:
    """Normalised (N, 3, S, S) input -> float32 (N, S, S) maps in [0, 1] for class `targets[i]`."""
    target = cam_target(model, x.shape[-1])
    if method == "gradcam" and target.reshape is None:
        return _layer_gradcam(model, target.layer, x, targets)
    with needs("trust", "this explanation (gradcam++, or gradcam of a ViT)"):
        from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam_class = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus}[method]
    cam = cam_class(model=model, target_layers=[target.layer], reshape_transform=target.reshape)
    try:
        with torch.enable_grad():
            # The input requires gradients so the activations do even when the weights do not.
            x = x.detach().requires_grad_(True)
            maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    finally:
        # Not `with cam:` — its __exit__ prints and swallows IndexErrors. Release removes the hooks
        # so the Classifier's model runs hook-free again.
        cam.activations_and_grads.release()
    return np.clip(maps, 0.0, 1.0).astype(np.float32)


def _layer_gradcam(model: nn.Module, layer: nn.Module, x: torch.Tensor, targets: list[int]) -> np.ndarray:
    """Grad-CAM (captum's LayerGradCam) of an NCHW layer, scaled as pytorch_grad_cam scales it:
    ReLU, min-max per image, bilinear resize to the input, min-max again.
    Normalised (N, 3, S, S) input -> float32 (N, S, S) in [0, 1]."""
    from captum.attr import LayerGradCam  # captum: imported when a map is drawn, not with explain

    with torch.enable_grad():
        # The input requires gradients so the activations do even when the weights do not.
        x = x.detach().requires_grad_(True)
        maps = LayerGradCam(model, layer).attribute(x, target=[int(t) for t in targets],
                                                    relu_attributions=True)  # (N, 1, h, w)
    maps = F.interpolate(_min_max(maps.detach().float()), size=tuple(x.shape[-2:]), mode="bilinear",
                         align_corners=False)  # OpenCV's INTER_LINEAR, as pytorch_grad_cam resizes
    return np.clip(_min_max(maps)[:, 0].cpu().numpy(), 0.0, 1.0).astype(np.float32)


def _min_max(maps: torch.Tensor) -> torch.Tensor:
    """(N, 1, h, w) -> each map minus its minimum, over its maximum (+ 1e-7, pytorch_grad_cam's
    scale_cam_image)."""
    low = maps.amin(dim=(1, 2, 3), keepdim=True)
    maps = maps - low
    return maps / (1e-7 + maps.amax(dim=(1, 2, 3), keepdim=True))


def _vit_target(model: nn.Module) -> CamTarget | None:
    """ViT-like (ViT, DeiT, BEiT, EVA, Mixer): tokens on a patch grid through `blocks`. The last
    block's norm1 feeds its token mixing, so the patch tokens there still steer the class token;
    after the last block only the pooled tokens reach the head and patch gradients can be zero."""
    embed = getattr(model, "patch_embed", None) or getattr(model, "stem", None)
    grid = getattr(embed, "grid_size", None)
    blocks = getattr(model, "blocks", None)
    if grid is None or not isinstance(blocks, nn.Sequential) or not hasattr(blocks[-1], "norm1"):
        return None
    prefix = int(getattr(model, "num_prefix_tokens", 0))  # class, distillation and register tokens
    h, w = int(grid[0]), int(grid[1])

    def tokens_to_map(tokens: torch.Tensor) -> torch.Tensor:
        """(N, prefix + h*w, C) tokens -> (N, C, h, w) map of the patch tokens."""
        if tokens.ndim != 3 or tokens.shape[1] != prefix + h * w:
            raise ModelError(
                f"expected {prefix} + {h}x{w} tokens in the last block, got shape {tuple(tokens.shape)}; "
                "this ViT variant is not supported by Grad-CAM, use --method ig"
            )
        return tokens[:, prefix:].reshape(tokens.shape[0], h, w, tokens.shape[2]).permute(0, 3, 1, 2)

    return CamTarget(f"blocks.{len(blocks) - 1}.norm1", blocks[-1].norm1, tokens_to_map)


def _cnn_target(model: nn.Module, img_size: int) -> CamTarget:
    """CNN-like: the deepest feature stage with at least MIN_GRID cells a side (the final feature
    map before pooling when it is that large). Shapes come from one forward pass on a blank image."""
    maps = [(name, s) for name, s in _output_shapes(model, img_size) if len(s) == 4]
    if not maps:
        raise ModelError(
            f"found no spatial feature map in {type(model).__name__} for Grad-CAM; "
            "use --method ig (Integrated Gradients works with any model)"
        )
    final = maps[-1]  # what global pooling sees: layer4, bn2, norm_pre...
    features = int(getattr(model, "num_features", 0))
    if features and features not in (final[1][1], final[1][3]):
        # e.g. LeViT: only its conv stem is spatial, the stages hold tokens with no grid attribute.
        raise ModelError(
            f"{type(model).__name__}'s last spatial map ({final[0]}) is not the one its head pools, "
            "so Grad-CAM would explain the wrong layer; use --method ig (Integrated Gradients "
            "works with any model)"
        )
    stage_names = {f["module"] for f in getattr(model, "feature_info", [])}
    stages = [(name, s) for name, s in maps if name in stage_names and name != final[0]] + [final]
    big = [(name, s) for name, s in stages if min(_grid(model, name, s)) >= MIN_GRID]
    name, shape = big[-1] if big else max(stages, key=lambda item: min(_grid(model, *item)))
    reshape = _nhwc_to_nchw if _is_nhwc(model, name, shape) else None
    return CamTarget(name, model.get_submodule(name), reshape)


def _output_shapes(model: nn.Module, img_size: int) -> list[tuple[str, tuple[int, ...]]]:
    """(module name, output shape) of every submodule whose output is a tensor, in the order they
    finish (a container after its children) on a (1, 3, img_size, img_size) input, up to the
    features the head pools (timm's forward_features) when the model says where that is."""
    shapes: list[tuple[str, tuple[int, ...]]] = []
    handles = []
    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(
                lambda _m, _i, out, name=name: shapes.append((name, tuple(out.shape)))
                if isinstance(out, torch.Tensor) else None))
    param = next(model.parameters())
    x = torch.zeros(1, 3, img_size, img_size, device=param.device, dtype=param.dtype)
    try:
        with torch.no_grad():
            getattr(model, "forward_features", model)(x.contiguous(memory_format=torch.channels_last))
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def _stage_channels(model: nn.Module, name: str) -> int | None:
    for info in getattr(model, "feature_info", []):
        if info["module"] == name:
            return int(info["num_chs"])
    return None


def _is_nhwc(model: nn.Module, name: str, shape: tuple[int, ...]) -> bool:
    channels = _stage_channels(model, name) or int(getattr(model, "num_features", 0))
    return shape[1] != channels and shape[3] == channels


def _grid(model: nn.Module, name: str, shape: tuple[int, ...]) -> tuple[int, int]:
    return (shape[1], shape[2]) if _is_nhwc(model, name, shape) else (shape[2], shape[3])


def _nhwc_to_nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)
