"""`explain(...)`: heat maps and PNG overlays for image files, folders, globs or PIL images,
with the prediction they explain. Unreadable inputs become error entries, never a failure.
A multi-label model gets one map per predicted label (each for that class's logit), or, when no
label passes its threshold, one map of its most probable class, said so in the caption."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from clarivis.classifier import Classifier, Unusable
from clarivis.data.expand import ImageInput
from clarivis.errors import ClarivisError
from clarivis.explain.maps import check_method, heatmaps
from clarivis.explain.overlay import overlay_png
from clarivis.prediction import LABEL_SEP

BATCH = 16  # images per forward/backward: bounds the memory autograd keeps


@dataclass
class Explanation:
    """One heat map and the prediction it explains; `error` is set (the rest empty) when the
    image was unreadable. Multi-label models: one entry per map, `labels` the image's predicted
    set (as Prediction.labels), `label` the map's class when it is predicted, else ""."""

    source: str  # file path, or "<image N>" for in-memory images
    method: str
    label: str | None = None  # predicted class
    # calibrated probability of `label`, as predict reports it; multi-label: of `target`
    confidence: float | None = None
    target: str | None = None  # class the map is for: `label` unless explain(target=...) said
    heatmap: np.ndarray | None = field(default=None, repr=False)  # float32 (S, S) in [0, 1]
    png: str | None = None  # overlay written under `out`
    error: str | None = None
    labels: list[tuple[str, float]] | None = None  # multi-label models only: the predicted set

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, without the heat map array (and without `labels` for single-label models,
        whose rows keep the fields they always had)."""
        d = {k: v for k, v in asdict(self).items() if k != "heatmap"}
        if self.labels is None:
            del d["labels"]
        else:
            d["labels"] = [{"label": name, "probability": p} for name, p in self.labels]
        return d


def explain(
    model: str | Path | Classifier, images: ImageInput | list[ImageInput], *, method: str = "gradcam",
    out: str | Path | None = None, target: str | int | None = None, device: str | None = None,
) -> list[Explanation]:
    """Heat maps (and, with `out`, `<out>/<stem>_<method>.png` overlays) for `images`: files,
    folders, globs or PIL images, as Classifier.predict takes. `model` is a bundle path (loaded
    on `device`) or a Classifier; `target` is a class name or index to explain instead of the
    predicted class. Multi-label models: an entry (and `<stem>_<class>_<method>.png`) per
    predicted label, or for the most probable class when none is predicted."""
    check_method(method)
    clf = model if isinstance(model, Classifier) else Classifier.load(model, device=device)
    target_index = _target_index(clf, target)
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    results: list[Explanation] = []
    names: set[str] = set()  # overlay names taken so far
    # predict's decode and resize, in this thread: the maps' backward passes use the cores
    for item in clf.iter_batches(images, batch_size=BATCH, threads=False):
        if isinstance(item, Unusable):
            results.append(Explanation(source=item.source, method=method, error=item.reason))
            continue
        if clf.config.multilabel:
            results += _explain_multilabel(clf, item.sources, item.pixels, method, target_index, out_dir,
                                           names)
            continue
        entries = [Explanation(source=source, method=method) for source in item.sources]
        results += entries
        _explain_batch(clf, list(zip(entries, item.pixels, strict=True)), target_index, out_dir, names)
    return results


def _explain_batch(clf: Classifier, pending: list[tuple[Explanation, torch.Tensor]], target: int | None,
                   out_dir: Path | None, names: set[str]) -> None:
    """Fill in label, confidence, target and heat map of the pending entries; draw overlays."""
    pixels = torch.stack([t for _, t in pending])  # uint8 (N, 3, S, S)
    probs = clf.predict_proba(clf.normalize(pixels.to(clf.device)))  # (N, C), as predict
    confidence, predicted = probs.max(dim=1)
    targets = predicted if target is None else torch.full_like(predicted, target)
    maps = heatmaps(clf, pixels, method=pending[0][0].method, targets=targets)
    for (entry, image), p, c, t, heat in zip(pending, predicted.tolist(), confidence.tolist(),
                                             targets.tolist(), maps, strict=True):
        entry.label, entry.confidence = clf.class_names[p], float(c)
        entry.target, entry.heatmap = clf.class_names[t], heat
        if out_dir is not None:
            path = out_dir / f"{_unique(_stem(entry.source), names)}_{entry.method}.png"
            path.write_bytes(overlay_png(image, heat, caption(entry)))
            entry.png = str(path)


def _explain_multilabel(clf: Classifier, sources: list[str], pixels: torch.Tensor, method: str,
                        target: int | None, out_dir: Path | None, names: set[str]) -> list[Explanation]:
    """The entries of one batch for a multi-label model: a map per (image, explained class), all
    in one heatmaps call on the images repeated as often as they have maps."""
    probs = clf.predict_proba(clf.normalize(pixels.to(clf.device)))  # (N, C), sigmoid a class
    thresholds = clf.config.label_thresholds()
    entries, rows, classes = [], [], []
    for row, (source, p) in enumerate(zip(sources, probs.tolist(), strict=True)):
        chosen = predicted_labels(p, thresholds)
        labels = [(clf.class_names[c], p[c]) for c in chosen]
        for c in [target] if target is not None else chosen or [max(range(len(p)), key=p.__getitem__)]:
            name = clf.class_names[c]
            entries.append(Explanation(source=source, method=method, label=name if c in chosen else "",
                                       confidence=float(p[c]), target=name, labels=labels))
            rows.append(row)
            classes.append(c)
    maps = heatmaps(clf, pixels[rows], method=method, targets=classes) if rows else []
    for entry, row, heat in zip(entries, rows, maps, strict=True):
        entry.heatmap = heat
        if out_dir is not None:
            path = out_dir / f"{_unique(_stem(entry.source) + '_' + _stem(entry.target), names)}_{method}.png"
            path.write_bytes(overlay_png(pixels[row], heat, caption(entry)))
            entry.png = str(path)
    return entries


def predicted_labels(probs: list[float], thresholds: list[float]) -> list[int]:
    """Indices of the classes at or above their thresholds, most probable first (the rule of
    prediction.multilabel_prediction)."""
    return sorted((c for c, p in enumerate(probs) if p >= thresholds[c]), key=lambda c: -probs[c])


def caption(entry: Explanation) -> str:
    """'cat 93% · gradcam', and the class the map is for when it is not the predicted one.
    Multi-label: 'red 93% · gradcam' per predicted label; 'no label predicted · map for the top
    class blue 31% · gradcam'; 'blue 31%, not predicted (green) · gradcam' for a --target."""
    if entry.labels is None:
        text = f"{entry.label} {entry.confidence:.0%} · {entry.method}"
        return text if entry.target == entry.label else f"{text} · map for {entry.target}"
    probability = f"{entry.target} {entry.confidence:.0%}"
    if entry.label:
        return f"{probability} · {entry.method}"
    if not entry.labels:
        return f"no label predicted · map for the top class {probability} · {entry.method}"
    predicted = LABEL_SEP.join(name for name, _ in entry.labels)
    return f"{probability}, not predicted ({predicted}) · {entry.method}"


def _target_index(clf: Classifier, target: str | int | None) -> int | None:
    names = clf.class_names
    if target is None:
        return None
    if isinstance(target, int) and 0 <= target < len(names):
        return target
    if isinstance(target, str) and target in names:
        return names.index(target)
    raise ClarivisError(f"unknown target class {target!r}; the model's classes are {', '.join(names[:20])}")


def _stem(source: str) -> str:
    """A file-name-safe stem: 'photos/cat.jpg' -> 'cat', '<image 3>' -> 'image-3'."""
    stem = Path(source).stem if not source.startswith("<") else source.strip("<>")
    return re.sub(r"[^\w.-]+", "-", stem).strip("-") or "image"


def _unique(name: str, used: set[str]) -> str:
    """`name`, or `name-2`, `name-3`... when two inputs share a stem (a/cat.jpg, b/cat.jpg)."""
    candidate, n = name, 1
    while candidate in used:
        n += 1
        candidate = f"{name}-{n}"
    used.add(candidate)
    return candidate


def explain_overlay(clf: Classifier, image: Image.Image, *, method: str = "gradcam",
                    target: str | None = None) -> tuple[bytes, str, float]:
    """One decoded image -> (overlay PNG: the model input | the map over it, predicted label, its
    calibrated probability). `target` names the class to explain [the predicted one]. The
    service's /v1/explain calls this through the facade, so serving ONNX never imports torch.
    Multi-label models: the label is the predicted set joined by ';' ("" for none) and the
    confidence the highest probability, as predict answers; the map is of the most probable class."""
    _, pixels = clf.prepare(("upload", image))
    if isinstance(pixels, str):  # the caller decoded it already; a failure here is not the client's
        raise RuntimeError(pixels)
    batch = pixels.unsqueeze(0)
    probs = clf.predict_proba(clf.normalize(batch.to(clf.device)))[0]
    index = int(probs.argmax())
    label, confidence = clf.class_names[index], float(probs[index])
    target_index = index if target is None else clf.class_names.index(target)
    heat = heatmaps(clf, batch, method=method, targets=torch.tensor([target_index]))[0]
    if clf.config.multilabel:
        chosen = predicted_labels(probs.tolist(), clf.config.label_thresholds())
        name = clf.class_names[target_index]
        entry = Explanation("upload", method, label=name if target_index in chosen else "",
                            confidence=float(probs[target_index]), target=name,
                            labels=[(clf.class_names[c], float(probs[c])) for c in chosen])
        label = LABEL_SEP.join(name for name, _ in entry.labels)
        return overlay_png(pixels, heat, caption(entry)), label, confidence
    text = f"{label} {confidence:.0%} · {method}"
    if target_index != index:
        text += f" · map for {target}"
    return overlay_png(pixels, heat, text), label, confidence
