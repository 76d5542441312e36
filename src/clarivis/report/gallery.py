"""The report's top-losses gallery: the validation images the model got most wrong, each with a
heat map of its prediction, so a reviewer sees what it looked at. Multi-label models: ranked by
the image's mean binary cross-entropy, the map for its worst-decided class."""

from __future__ import annotations

from pathlib import Path

import torch

from clarivis.classifier import Classifier
from clarivis.data.sources import Sample
from clarivis.data.thumbnails import data_uri
from clarivis.errors import ClarivisError, ModelError
from clarivis.evaluate.inputs import ScoredValidation, score_samples
from clarivis.explain.cam import cam_target
from clarivis.explain.maps import heatmaps
from clarivis.explain.overlay import overlay_png
from clarivis.prediction import LABEL_SEP


def top_losses(bundle_dir: str | Path, split: dict | None, *, count: int = 8,
               device: str | None = None, scored: ScoredValidation | None = None) -> list[dict]:
    """[{path, name, true, predicted, confidence, loss, method, png (data URI)}] for the `count`
    validation images with the highest loss; [] when the run has no validation split.
    Multi-label: label sets, and `target`, the class the map is for (_multilabel_top_losses)."""
    if not split or not split.get("val"):
        return []
    scored = scored or _score_validation(bundle_dir, split, device)
    if scored is None:
        return []
    if scored.clf.config.multilabel:
        return _multilabel_top_losses(scored, count)
    clf, val = scored.clf, scored.val
    logits = scored.logits / clf.config.temperature
    losses = torch.nn.functional.cross_entropy(logits, val.targets, reduction="none")
    worst = losses.argsort(descending=True)[:count]
    probs = torch.softmax(logits[worst], dim=1)
    confidence, predicted = probs.max(dim=1)
    method = gallery_method(clf)
    maps = _maps(clf, val.pixels[worst], method, predicted)
    items = []
    for n, i in enumerate(worst.tolist()):
        name = clf.class_names[int(predicted[n])]
        caption = f"{name} {100 * float(confidence[n]):.0f}% (true {val.samples[i].label})"
        png = overlay_png(val.pixels[i], maps[n], caption)
        items.append({"path": val.samples[i].path, "name": Path(val.samples[i].path).name,
                      "true": val.samples[i].label, "predicted": name,
                      "confidence": float(confidence[n]), "loss": float(losses[i]), "method": method,
                      "png": data_uri(png)})
    return items


def _multilabel_top_losses(scored: ScoredValidation, count: int) -> list[dict]:
    """top_losses of a multi-label model: `predicted` and `true` are label sets joined by ';'
    ("none" for the empty set); the map and `confidence` are for `target`, the class whose
    decision costs the image the most loss (a missed or a wrong label, usually)."""
    clf, val = scored.clf, scored.val
    logits = clf.label_logits(scored.logits)
    per_class = torch.nn.functional.binary_cross_entropy_with_logits(logits, val.targets, reduction="none")
    losses = per_class.mean(dim=1)
    worst = losses.argsort(descending=True)[:count]
    probs = torch.sigmoid(logits[worst])
    chosen = probs >= torch.as_tensor(clf.config.label_thresholds(), dtype=probs.dtype)
    targets = per_class[worst].argmax(dim=1)
    method = gallery_method(clf)
    maps = _maps(clf, val.pixels[worst], method, targets)
    items = []
    for n, i in enumerate(worst.tolist()):
        predicted = _label_set(clf.class_names, chosen[n])
        true = _label_set(clf.class_names, val.targets[i] > 0.5)
        target, probability = clf.class_names[int(targets[n])], float(probs[n, targets[n]])
        caption = f"predicted: {predicted}  true: {true}  (map: {target} {probability:.0%})"
        png = overlay_png(val.pixels[i], maps[n], caption)
        items.append({"path": val.samples[i].path, "name": Path(val.samples[i].path).name,
                      "true": true, "predicted": predicted, "target": target,
                      "confidence": probability, "loss": float(losses[i]), "method": method,
                      "png": data_uri(png)})
    return items


def _maps(clf: Classifier, pixels: torch.Tensor, method: str, targets: torch.Tensor):
    """The heat maps of `targets`, or blank ones for an architecture no method can explain (the
    gallery then shows the images alone)."""
    try:
        return heatmaps(clf, pixels, method=method, targets=targets)
    except ClarivisError:
        return torch.zeros(pixels.shape[0], *pixels.shape[2:]).numpy()


def _label_set(class_names: list[str], mask: torch.Tensor) -> str:
    names = [name for name, on in zip(class_names, mask.tolist(), strict=True) if on]
    return LABEL_SEP.join(names) if names else "none"


def _score_validation(bundle_dir: str | Path, split: dict, device: str | None) -> ScoredValidation | None:
    clf = Classifier.load(bundle_dir, device=device)
    samples = [Sample.from_record(v) for v in split["val"] if Path(v["path"]).is_file()]
    if not clf.config.multilabel:  # a multi-label image keeps its known labels (score_samples)
        samples = [s for s in samples if s.label in clf.class_names]
    return score_samples(clf, samples) if samples else None


def gallery_method(clf) -> str:
    """Grad-CAM for CNNs. Integrated Gradients for ViTs: on ViTs trained from scratch, Grad-CAM at
    the last block carries no location (pointing game in tests/explain: 1.0x the box's area
    share, IG 3.0x), because the last blocks spread the evidence over every token."""
    try:
        target = cam_target(clf.model, clf.config.preprocess.img_size)
    except ModelError:
        return "ig"
    return "gradcam" if target.reshape is None else "ig"
