"""Create models by name (CNNs and ViTs alike), load weights safely, replace heads, freeze.

Names go through a small registry of architecture families (`FAMILIES`, first match wins):
"open_clip:<name or config JSON>" builds a CLIP classifier (models/clip.py); every other name is
timm's, which includes clarivis's own small-image nets (models/small_nets.py registers them
with timm when imported, which this module does)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file
from torch import nn

from clarivis.errors import ModelError
from clarivis.models import small_nets  # noqa: F401 (registers airnet_*, resnet18_small with timm)
from clarivis.models.clip import check_clip_name, clip_pretrained_cfg, create_clip_classifier
from clarivis.models.open_clip import is_clip_name


@dataclass(frozen=True)
class Family:
    """A family of architecture names and how the factory serves them."""

    name: str
    matches: Callable[[str], bool]  # does an architecture name belong to this family?
    # (name, *, num_classes, img_size, pretrained, weights, drop_rate, **model_kwargs) -> model
    create: Callable[..., nn.Module]
    pretrained_cfg: Callable[[str], dict]  # timm-style: input_size, mean, std, classifier...
    check_name: Callable[[str], None]  # raises ModelError for a name the family cannot build


def create_model(
    name: str,
    *,
    num_classes: int,
    img_size: int | None = None,
    pretrained: bool = False,
    weights: str | Path | None = None,
    drop_rate: float = 0.0,
    **model_kwargs,
) -> nn.Module:
    """A model with `num_classes` outputs; weights from the family's hub or a local file.
    `model_kwargs` go to the architecture (e.g. patch_size, drop_path_rate)."""
    return family_of(name).create(name, num_classes=num_classes, img_size=img_size,
                                  pretrained=pretrained, weights=weights, drop_rate=drop_rate,
                                  **model_kwargs)


def check_model_name(name: str) -> None:
    family_of(name).check_name(name)


def pretrained_cfg(name: str) -> dict:
    """The architecture's default config (timm's pretrained_cfg): input size, mean/std,
    classifier name."""
    return family_of(name).pretrained_cfg(name)


def family_of(name: str) -> Family:
    """The registered family that builds architecture `name` (timm when no other claims it)."""
    return next(f for f in FAMILIES if f.matches(name))


def _create_timm_model(
    name: str,
    *,
    num_classes: int,
    img_size: int | None = None,
    pretrained: bool = False,
    weights: str | Path | None = None,
    drop_rate: float = 0.0,
    **model_kwargs,
) -> nn.Module:
    """A timm model with `num_classes` outputs; weights from timm's hub or a local file."""
    _check_timm_name(name)
    kwargs: dict = {**model_kwargs, "num_classes": num_classes, "drop_rate": drop_rate}
    if img_size and _fixed_input_size(name):
        kwargs["img_size"] = img_size  # ViT/DeiT/Swin build position embeddings for this size
    if weights is not None:
        return _create_with_local_weights(name, Path(weights), kwargs)
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as err:
        raise ModelError(f"'{name}' does not accept these settings: {_first_line(err)}") from None
    except (RuntimeError, OSError, ValueError) as err:
        if pretrained:
            raise ModelError(
                f"could not fetch pretrained weights for '{name}' ({_first_line(err)}); "
                "check the network or pass a local file with --weights"
            ) from None
        raise ModelError(f"cannot build '{name}': {_first_line(err)}") from None
    if pretrained and num_classes != _timm_pretrained_cfg(name).get("num_classes"):
        zero_head(model)
    return model


def zero_head(model: nn.Module) -> None:
    """Start a new head on pretrained features at zero (as BiT does): logits start at 0 and
    the loss at ln(C). timm's default head init gives logits of std ~10 on 1280-d features,
    whose large early gradients damage the pretrained backbone before the head has settled."""
    head = model.get_classifier()
    for p in head.parameters() if isinstance(head, nn.Module) else []:
        nn.init.zeros_(p)


def _check_timm_name(name: str) -> None:
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:5]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise ModelError(f"unknown model '{name}'{hint}; see timm.list_models() for names")


def check_weights_file(path: str | Path) -> None:
    if not Path(path).is_file():
        raise ModelError(f"weights file {path} not found; pass a .safetensors or .pt/.pth file")


def _timm_pretrained_cfg(name: str) -> dict:
    cfg = timm.get_pretrained_cfg(name)
    return cfg.to_dict() if cfg is not None else {}


def _fixed_input_size(name: str) -> bool:
    return bool(_timm_pretrained_cfg(name).get("fixed_input_size", False))


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file or a torch state dict, never unpickling arbitrary objects."""
    check_weights_file(path)
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            # weights_only=True: a checkpoint that needs arbitrary classes is refused, not run.
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # safetensors/pickle raise many types for bad files
        raise ModelError(
            f"cannot read weights from {path} ({_first_line(err)}); "
            "use a safetensors file or a plain tensor state dict"
        ) from None
    for key in ("state_dict", "model", "model_state_dict", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]  # training checkpoints nest the weights
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path} holds no tensor state dict; export the model's state_dict()")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _create_with_local_weights(name: str, path: Path, kwargs: dict) -> nn.Module:
    """Let timm load the tensors (its filter resizes ViT position embeddings and drops a head
    of another class count); check first that they belong to this architecture at all."""
    state = load_state_dict_file(path)
    fresh = timm.create_model(name, pretrained=False, **kwargs)
    heads = _classifier_names(name)
    model_state = fresh.state_dict()
    missing = [
        k for k in model_state
        if k not in state and not _is_head(k, heads) and not k.endswith("num_batches_tracked")
    ]
    if missing:
        raise ModelError(
            f"weights in {path.name} do not fit '{name}': {len(missing)} of {len(model_state)} "
            f"tensors missing (e.g. '{missing[0]}'); pass the --model these weights were made for"
        )
    head_rows = _head_rows(state, heads)
    headless = head_rows is None
    if headless:
        # A headless backbone (e.g. self-supervised): keep the fresh head, load the rest.
        state.update({k: v for k, v in model_state.items() if _is_head(k, heads)})
        head_rows = kwargs["num_classes"]
    overlay = {"state_dict": state, "num_classes": head_rows}
    try:
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except RuntimeError as err:
        raise ModelError(
            f"weights in {path.name} do not fit '{name}' ({_first_line(err)[:200]}); "
            "pass the --model these weights were made for"
        ) from None
    if head_rows != kwargs["num_classes"] or headless:
        zero_head(model)
    return model


def _classifier_names(name: str) -> tuple[str, ...]:
    cls = _timm_pretrained_cfg(name).get("classifier") or "head"
    return (cls,) if isinstance(cls, str) else tuple(cls)


def _is_head(key: str, heads: tuple[str, ...]) -> bool:
    return any(key.startswith(h + ".") for h in heads)


def _head_rows(state: dict[str, torch.Tensor], heads: tuple[str, ...]) -> int | None:
    for h in heads:
        w = state.get(h + ".weight")
        if w is not None:
            return int(w.shape[0])
    return None


def classifier_parameters(model: nn.Module) -> list[nn.Parameter]:
    head = model.get_classifier()
    return list(head.parameters()) if isinstance(head, nn.Module) else []


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze (False) or unfreeze (True) everything but the classifier head."""
    head_ids = {id(p) for p in classifier_parameters(model)}
    for p in model.parameters():
        p.requires_grad_(trainable or id(p) in head_ids)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else err.__class__.__name__


TIMM = Family("timm", matches=lambda _name: True, create=_create_timm_model,
              pretrained_cfg=_timm_pretrained_cfg, check_name=_check_timm_name)
CLIP = Family("open_clip", matches=is_clip_name, create=create_clip_classifier,
              pretrained_cfg=clip_pretrained_cfg, check_name=check_clip_name)
# The registry, first match wins: timm takes every name, so it comes last.
FAMILIES: tuple[Family, ...] = (CLIP, TIMM)
