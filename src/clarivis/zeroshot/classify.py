"""Zero-shot classification: CLIP's image tower with a head made from the labels' text
embeddings (models/clip.py builds it). It runs through the ordinary Classifier (the same
decoding, batching, error rows and preprocessing as `clarivis predict`) and saves as an ordinary
ModelBundle."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TypedDict, Unpack

from clarivis.classifier import Classifier
from clarivis.data.expand import ImageInput
from clarivis.device import resolve_device
from clarivis.models.bundle import save_bundle
from clarivis.models.clip import clip_text_classifier
from clarivis.models.open_clip import CLIP_PREFIX, clip_preprocess
from clarivis.models.prompts import DEFAULT_CLIP, check_templates
from clarivis.prediction import Prediction
from clarivis.spec import BundleConfig
from clarivis.zeroshot.prompts import parse_labels, read_templates

Templates = Sequence[str] | str | Path | None  # a list, a file with one a line, or the default


class ClipChoice(TypedDict, total=False):
    """Which CLIP answers, as the keyword arguments of zeroshot_classifier (its defaults apply
    to what is left out): the same names as `clarivis zeroshot`'s flags."""

    clip: str  # open_clip name or model-config JSON (default DEFAULT_CLIP)
    clip_weights: str | Path | None  # an open_clip checkpoint file
    pretrained: str | None  # open_clip hub tag (default: the model's first)
    templates: Templates  # prompt templates (default DEFAULT_TEMPLATES)
    device: str | None  # default: the best one present


def zeroshot_classifier(
    labels: str | Path | Sequence[str], *, clip: str = DEFAULT_CLIP,
    clip_weights: str | Path | None = None, pretrained: str | None = None,
    templates: Templates = None, device: str | None = None,
) -> Classifier:
    """A clarivis Classifier that answers with `labels` (comma-separated, a file with one a line,
    or a list), built from CLIP text embeddings: no images, no training."""
    names = parse_labels(labels)
    chosen = _templates(templates)
    dev = resolve_device(device)
    model, spec = clip_text_classifier(clip, names, weights=clip_weights, pretrained=pretrained,
                                       templates=chosen, device=dev)
    source = {"method": "zero-shot", "clip": spec.name, "templates": chosen,
              "clip_weights": Path(clip_weights).name if clip_weights else None,
              "pretrained": None if clip_weights else pretrained,
              "trained_at": datetime.now().isoformat(timespec="seconds")}
    config = BundleConfig.for_model(architecture=CLIP_PREFIX + spec.name, class_names=names,
                                preprocess=clip_preprocess(spec), training=source)
    return Classifier(model, config, dev, reject=False)


def zeroshot_classify(
    images: ImageInput | Iterable[ImageInput], labels: str | Path | Sequence[str], *,
    top_k: int = 5, batch_size: int = 64, **choice: Unpack[ClipChoice],
) -> list[Prediction]:
    """Top-k of `labels` for files, folders, globs or PIL images, by CLIP image-text similarity
    (softmax of CLIP's logits); unreadable files become error rows. `choice`: clip,
    clip_weights, pretrained, templates, device, as zeroshot_classifier takes them."""
    clf = zeroshot_classifier(labels, **choice)
    return clf.predict(images, top_k=top_k, batch_size=batch_size)


def save_zeroshot_bundle(folder: str | Path, labels: str | Path | Sequence[str],
                         **choice: Unpack[ClipChoice]) -> Path:
    """Write the zero-shot classifier of `labels` as a ModelBundle (`choice` as
    zeroshot_classifier takes it) that predict, evaluate, audit, explain, export and serve accept."""
    clf = zeroshot_classifier(labels, **choice)
    return save_bundle(folder, clf.model, clf.config)


def _templates(templates: Templates) -> list[str]:
    if isinstance(templates, (str, Path)):
        return read_templates(templates)
    return check_templates(templates)
