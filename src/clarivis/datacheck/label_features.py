"""Which features the label check scores labels with: a ModelBundle's, a pretrained backbone's
(a timm name with local weights, timm hub weights, or a `clarivis pretrain` backbone), or none
(then label_issues trains a small model per fold). Embedding goes through clarivis.embeddings,
the one embedding path: the backbone's pre-logits features at its own preprocessing."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import timm
from safetensors import safe_open

from clarivis import runs
from clarivis.data.sources import Sample
from clarivis.embeddings import embed_samples, load_encoder
from clarivis.errors import DataError, ModelError
from clarivis.models.factory import check_model_name, check_weights_file
from clarivis.models.hub_cache import cached_hub_weights

# The backbone used when weights are given without --model, or found in the hub cache when
# nothing is given: ImageNet efficientnet_lite0 (4.7 M parameters, 1280-d features), the backbone
# the label check was measured with: 15/16/17 of 18 planted CIFAR-10 errors in the top 40 at its
# 224 px (benchmarks/README.md, "label_check_planted.py"). Other backbones were not compared.
DEFAULT_BACKBONE = "efficientnet_lite0"


@dataclass(frozen=True)
class FeatureSource:
    model: str  # a ModelBundle folder (or its run folder) or a timm name
    weights: str | None = None  # local weights file of a timm name
    pretrained: bool = False  # timm hub weights of a timm name (downloaded when not cached)
    img_size: int | None = None  # input size of a timm name [its pretrained size, e.g. 224]
    why: str = ""  # how it was chosen, one line (printed and kept in the result)

    def describe(self) -> str:
        if self.is_bundle:
            return f"ModelBundle {self.model}"
        weights = (f"weights {Path(self.weights).name}" if self.weights
                   else "timm hub weights" if self.pretrained else "random weights")
        size = f", {self.img_size} px" if self.img_size else ""
        return f"{self.model} ({weights}{size})"

    @property
    def is_bundle(self) -> bool:
        return Path(self.model).expanduser().exists()


def choose_features(
    model: str | Path | FeatureSource | None = None, *, weights: str | Path | None = None,
    pretrained: bool = False, img_size: int | None = None, cached: bool = True,
) -> FeatureSource | None:
    """The features to score labels with, or None for per-fold training. Given weights
    (`weights`, `pretrained`) mean a backbone even without `model` (the architecture a
    `pretrain` backbone names, else DEFAULT_BACKBONE); with nothing given, DEFAULT_BACKBONE's hub
    weights are used when they are already in the local cache and `cached` is on (no download)."""
    if isinstance(model, FeatureSource):
        return model
    if weights is not None and pretrained:
        raise ModelError("give --weights FILE or --pretrained, not both")
    if weights is not None:
        check_weights_file(weights)
        weights = str(weights)
    if model is not None and Path(model).expanduser().exists():
        if weights is not None or pretrained:
            raise ModelError(f"{model} is a ModelBundle with its own weights; --weights and "
                             "--pretrained go with a timm model name")
        return FeatureSource(str(model), why="the given ModelBundle")
    info = _backbone_info(weights)
    if model is None and weights is not None:
        named = info.get("model") or _named_architecture(weights)
        model, why = named or DEFAULT_BACKBONE, ("named by the weights file" if named
                                                 else "default backbone")
    elif model is None and pretrained:
        model, why = DEFAULT_BACKBONE, "default backbone"
    elif model is None:
        found = cached_hub_weights(DEFAULT_BACKBONE) if cached else None
        if found is None:
            return None
        return FeatureSource(DEFAULT_BACKBONE, str(found), img_size=img_size,
                             why="its hub weights are in the local cache")
    else:
        why = "given"
    model = str(model)
    check_model_name(model)
    if weights is None:
        found = cached_hub_weights(model) if (cached or pretrained) else None
        if found is not None:  # the hub weights, read from the cache: no request
            weights, pretrained = str(found), False
            why += ", hub weights from the local cache"
        elif not pretrained:
            raise ModelError(f"--model {model} needs --weights FILE or --pretrained (random "
                             "features cannot judge labels); or leave out --model to train a "
                             "small model per fold")
    if img_size is None and info.get("model") == model:
        img_size = info.get("img_size")  # a pretrain backbone: the size it was trained at
    return FeatureSource(model, weights, pretrained, img_size, why)


def backbone_features(source: FeatureSource, samples: list[Sample], *, device: str | None = None,
                      batch_size: int = 64) -> np.ndarray:
    """(N, D) float32 pre-logits features of `samples`, in their order."""
    clf = load_encoder(source.model, weights=source.weights, pretrained=source.pretrained,
                       img_size=source.img_size, device=device)
    net = clf.model
    if not (hasattr(net, "forward_features") and hasattr(net, "forward_head")):
        raise ModelError(f"{source.model}: its network has no timm forward_features/forward_head; "
                         "run the label check without --model")
    found = embed_samples(clf, samples, batch_size=batch_size)
    if found.paths != [s.path for s in samples]:
        bad = ", ".join(d["path"] for d in found.skipped[:3])
        raise DataError(f"files became unreadable during the check ({bad}); run it again")
    return found.vectors


def _backbone_info(weights: str | None) -> dict:
    """What `clarivis pretrain` wrote beside its backbone.safetensors (model, img_size), if any."""
    if weights is None:
        return {}
    info = Path(weights).with_name(runs.BACKBONE_INFO)
    try:
        return json.loads(info.read_text()) if info.is_file() else {}
    except (OSError, ValueError):
        return {}


def _named_architecture(weights: str) -> str | None:
    """The timm name a weights file is named after ('efficientnet_lite0.in1k.safetensors', as
    timm's hub tags name files), or the `architecture` a pretrain backbone stores in its metadata."""
    path = Path(weights)
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                name = (f.metadata() or {}).get("architecture")
            if name and timm.is_model(name):
                return name
        except Exception:  # an unreadable file: load_state_dict_file says why, later
            pass
    stem = path.name.split(".")[0]
    return stem if timm.is_model(stem) else None
