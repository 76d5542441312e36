"""What a prediction is, for every backend: torch (clarivis.api), onnxruntime (clarivis.runtime)
and the service; and which backends there are. Torch-free, so the runtime can share it and the
CLI's help reads it without importing torch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from clarivis.errors import ClarivisError

LABEL_SEP = ";"  # joins a multi-label set: in manifests (the default) and in Prediction.label

UNKNOWN_LABEL = "unknown"  # the answer when the open-set check rejects an image
# What runs the model: torch (clarivis.Classifier) or onnx (the runtime's Predictor on the
# bundle's exported model.onnx); `predict --backend` and `serve --backend` take these names.
BACKENDS = ("torch", "onnx")


def check_backend(name: str) -> None:
    if name not in BACKENDS:
        raise ClarivisError(f"unknown backend '{name}'; choose one of {', '.join(BACKENDS)}")


@dataclass
class Prediction:
    """Top-k labels for one image; `error` is set (and the rest empty) when it was unreadable.

    A multi-label model's answer is the set `labels`: every class whose calibrated probability
    reaches its threshold, most probable first (empty: none of them). `label` then joins their
    names with LABEL_SEP ("" for the empty set), `confidence` is the highest probability of
    any class and `top_k` the most probable classes, each probability independent of the others."""

    source: str  # file path, or "<image N>" for in-memory images
    label: str | None = None  # UNKNOWN_LABEL when the open-set check rejects the image
    confidence: float | None = None  # calibrated probability of the top class
    top_k: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None
    ood_score: float | None = None  # in-distribution score (higher: more like the training data)
    labels: list[tuple[str, float]] | None = None  # multi-label models only, see above

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["top_k"] = [{"label": lbl, "probability": p} for lbl, p in self.top_k]
        if self.labels is None:
            del d["labels"]  # single-label answers keep the fields they always had
        else:
            d["labels"] = [{"label": lbl, "probability": p} for lbl, p in self.labels]
        return d


def multilabel_prediction(source: str, probabilities: Sequence[float], class_names: Sequence[str],
                          thresholds: Sequence[float], top_k: int) -> Prediction:
    """One image's multi-label answer from its C calibrated sigmoid probabilities (class
    order): the same rule for torch, onnxruntime and the service."""
    probs = [float(p) for p in probabilities]
    ranked = sorted(range(len(probs)), key=lambda i: -probs[i])
    chosen = [(class_names[i], probs[i]) for i in ranked if probs[i] >= thresholds[i]]
    top = [(class_names[i], probs[i]) for i in ranked[:top_k]]
    return Prediction(source=source, label=LABEL_SEP.join(name for name, _ in chosen),
                      confidence=top[0][1] if top else None, top_k=top, labels=chosen)
