"""The report's top-losses gallery: the validation images the model got most wrong, each with a
heat map of its prediction, so a reviewer sees what it looked at."""

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


def top_losses(bundle_dir: str | Path, split: dict | None, *, count: int = 8,
               device: str | None = None, scored: ScoredValidation | None = None) -> list[dict]:
    """[{path, name, true, predicted, confidence, loss, method, png (data URI)}] for the `count`
    validation images with the highest loss; [] when the run has no validation split."""
    if not split or not split.get("val"):
        return []
    scored = scored or _score_validation(bundle_dir, split, device)
    if scored is None:
        return []
    clf, val = scored.clf, scored.val
    logits = scored.logits / clf.config.temperature
    losses = torch.nn.functional.cross_entropy(logits, val.targets, reduction="none")
    worst = losses.argsort(descending=True)[:count]
    probs = torch.softmax(logits[worst], dim=1)
    confidence, predicted = probs.max(dim=1)
    method = gallery_method(clf)
    try:
        maps = heatmaps(clf, val.pixels[worst], method=method, targets=predicted)
    except ClarivisError:  # an architecture no method can explain: show the images alone
        maps = None
    items = []
    for n, i in enumerate(worst.tolist()):
        name = clf.class_names[int(predicted[n])]
        caption = f"{name} {100 * float(confidence[n]):.0f}% (true {val.samples[i].label})"
        heat = maps[n] if maps is not None else torch.zeros(val.pixels.shape[2:]).numpy()
        png = overlay_png(val.pixels[i], heat, caption)
        items.append({"path": val.samples[i].path, "name": Path(val.samples[i].path).name,
                      "true": val.samples[i].label, "predicted": name,
                      "confidence": float(confidence[n]), "loss": float(losses[i]), "method": method,
                      "png": data_uri(png)})
    return items


def _score_validation(bundle_dir: str | Path, split: dict, device: str | None) -> ScoredValidation | None:
    clf = Classifier.load(bundle_dir, device=device)
    samples = [Sample.from_record(v) for v in split["val"] if Path(v["path"]).is_file()]
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
