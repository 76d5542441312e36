"""Untrained tiny Classifiers (no training, no downloads) for the explain tests."""

from __future__ import annotations

import torch
from tests.conftest import VIT

from clarivis.api import Classifier
from clarivis.data.transforms import Preprocess
from clarivis.models.bundle import make_bundle_config
from clarivis.models.factory import create_model

CLASSES = ["cat", "dog", "fox"]


def tiny_classifier(name: str, size: int = 32) -> Classifier:
    """`name` at `size` px with 3 classes; ViTs get 8 px patches (a 4x4 grid at 32 px)."""
    torch.manual_seed(0)
    kwargs = {"patch_size": 8} if name == VIT else {}
    model = create_model(name, num_classes=len(CLASSES), img_size=size, **kwargs)
    config = make_bundle_config(architecture=name, class_names=CLASSES, preprocess=Preprocess(img_size=size),
                                model_kwargs=kwargs)
    return Classifier(model, config, torch.device("cpu"))
