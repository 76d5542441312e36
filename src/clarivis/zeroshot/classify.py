"""Zero-shot classification: CLIP's image tower with a head made from the labels' text
embeddings. It runs through the ordinary Classifier (the same decoding, batching, error rows and
preprocessing as `clarivis predict`) and saves as an ordinary ModelBundle."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path

import torch

from clarivis.config import TrainConfig
from clarivis.data.expand import ImageInput
from clarivis.models.bundle import make_bundle_config, save_bundle
from clarivis.models.clip import CLIPClassifier, load_clip_for
from clarivis.prediction import Prediction
from clarivis.training.defaults import resolve_device
from clarivis.zeroshot.load import CLIP_PREFIX, DEFAULT_CLIP, ClipSpec, clip_preprocess, clip_tokenizer
from clarivis.zeroshot.prompts import (
    check_templates,
    class_text_embeddings,
    parse_labels,
    prompt_label,
    read_templates,
)

Templates = Sequence[str] | str | Path | None  # a list, a file with one a line, or the default


def text_classifier(
    clip: str, class_names: Sequence[str], *, clip_weights: str | Path | None = None,
    pretrained: bool | str | None = None, templates: Sequence[str] | None = None,
    prompts: Sequence[str] | None = None, img_size: int | None = None, drop_rate: float = 0.0,
    device: torch.device | str = "cpu",
) -> tuple[CLIPClassifier, ClipSpec]:
    """A CLIPClassifier whose head is CLIP's zero-shot classifier for `class_names` (`prompts`:
    the words put into the templates, default the names). Weights from `clip_weights`, else the
    hub tag `pretrained` (True or None: the model's first tag)."""
    templates = check_templates(templates)
    full, spec = load_clip_for(clip, weights=clip_weights, pretrained=pretrained or True,
                               img_size=img_size)
    full.to(device)
    text = class_text_embeddings(full, clip_tokenizer(spec), list(prompts or class_names),
                                 templates, device=device)  # (C, D) unit rows
    model = CLIPClassifier(full.visual, spec.config, len(class_names), drop_rate).to(device)
    model.set_text_head(text, logit_scale=float(full.logit_scale.detach().exp()))
    return model.eval(), spec


def zeroshot_classifier(
    labels: str | Path | Sequence[str], *, clip: str = DEFAULT_CLIP,
    clip_weights: str | Path | None = None, pretrained: str | None = None,
    templates: Templates = None, device: str | None = None,
):
    """A clarivis Classifier that answers with `labels` (comma-separated, a file with one a line,
    or a list), built from CLIP text embeddings: no images, no training."""
    from clarivis.api import Classifier  # api imports the training stack; only needed here

    names = parse_labels(labels)
    chosen = _templates(templates)
    dev = resolve_device(device)
    model, spec = text_classifier(clip, names, clip_weights=clip_weights, pretrained=pretrained,
                                  templates=chosen, device=dev)
    source = {"method": "zero-shot", "clip": spec.name, "templates": chosen,
              "clip_weights": Path(clip_weights).name if clip_weights else None,
              "pretrained": None if clip_weights else pretrained,
              "trained_at": datetime.now().isoformat(timespec="seconds")}
    config = make_bundle_config(architecture=CLIP_PREFIX + spec.name, class_names=names,
                                preprocess=clip_preprocess(spec), training=source)
    return Classifier(model, config, dev, reject=False)


def zeroshot_classify(
    images: ImageInput | Iterable[ImageInput], labels: str | Path | Sequence[str], *,
    clip: str = DEFAULT_CLIP, clip_weights: str | Path | None = None, pretrained: str | None = None,
    templates: Templates = None, top_k: int = 5, batch_size: int = 64, device: str | None = None,
) -> list[Prediction]:
    """Top-k of `labels` for files, folders, globs or PIL images, by CLIP image-text similarity
    (softmax of CLIP's logits); unreadable files become error rows."""
    clf = zeroshot_classifier(labels, clip=clip, clip_weights=clip_weights, pretrained=pretrained,
                              templates=templates, device=device)
    return clf.predict(images, top_k=top_k, batch_size=batch_size)


def save_zeroshot_bundle(folder: str | Path, labels: str | Path | Sequence[str], **kwargs) -> Path:
    """Write the zero-shot classifier of `labels` as a ModelBundle (kwargs as zeroshot_classifier)
    that predict, evaluate, audit, explain, export and serve accept."""
    clf = zeroshot_classifier(labels, **kwargs)
    return save_bundle(folder, clf.model, clf.config)


def text_initialized_model(config: TrainConfig, class_names: Sequence[str]) -> CLIPClassifier:
    """`clarivis train --init-from-text`: the CLIP model of config.model with its CLIP weights,
    the head starting as the zero-shot classifier of the class folder names ('_' as spaces)."""
    model, _ = text_classifier(
        config.model, class_names, clip_weights=config.weights, pretrained=config.pretrained,
        templates=config.text_templates, prompts=[prompt_label(c) for c in class_names],
        img_size=config.img_size, drop_rate=config.drop_rate)
    return model


def _templates(templates: Templates) -> list[str]:
    if isinstance(templates, (str, Path)):
        return read_templates(templates)
    return check_templates(templates)
