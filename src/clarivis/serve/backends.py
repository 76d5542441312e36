"""What the service predicts with: torch (clarivis.Classifier) or ONNX (clarivis.runtime.Predictor),
behind one small protocol. Both take decoded RGB PIL images, so the service decodes uploads once,
safely, whatever runs the model.

The torch side is reached through the lazy facade (`clarivis.Classifier`), so a service on
`--backend onnx` never imports torch: it runs from the runtime's dependencies and the web stack."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

import clarivis
from clarivis.errors import ModelError
from clarivis.prediction import check_backend
from clarivis.runtime import Predictor
from clarivis.spec import ONNX_NAME


@dataclass
class Scored:
    """One image's answer, whichever backend gave it."""

    label: str  # "unknown" when the open-set check rejects the image
    confidence: float  # calibrated probability of the top class
    top_k: list[tuple[str, float]]
    ood_score: float | None = None


class Backend(Protocol):
    name: str

    def predict(self, images: list[Image.Image], top_k: int) -> list[Scored]: ...


class TorchBackend:
    """clarivis.Classifier: the reference implementation (any device torch has)."""

    name = "torch"

    def __init__(self, classifier: Any) -> None:  # a clarivis.Classifier
        self.classifier = classifier

    def predict(self, images: list[Image.Image], top_k: int) -> list[Scored]:
        return [_scored(p) for p in self.classifier.predict(images, top_k=top_k, batch_size=len(images))]


class OnnxBackend:
    """clarivis.runtime.Predictor on the bundle's exported model.onnx (no torch in the model call)."""

    name = "onnx"

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    def predict(self, images: list[Image.Image], top_k: int) -> list[Scored]:
        return [_scored(p) for p in self.predictor.predict(images, top_k=top_k)]


def load_backend(name: str, model_dir: str | Path, device: str | None = None) -> Backend:
    folder = Path(model_dir)
    if name == "onnx" and not (folder / ONNX_NAME).is_file():  # the service's advice
        raise ModelError(f"{folder} has no {ONNX_NAME}; run clarivis export {folder} first, "
                         "or serve with --backend torch")
    check_backend(name)
    if name == "onnx":
        return OnnxBackend(Predictor(folder, reject=True))
    return TorchBackend(clarivis.Classifier.load(folder, device=device, reject=True))


def _scored(p: Any) -> Scored:
    """A clarivis Prediction (or the runtime's equivalent) -> Scored. Images reach the backend
    decoded, so an `error` here is a bug, not bad input: it fails the batch."""
    if getattr(p, "error", None):
        raise RuntimeError(f"the model could not score a decoded image: {p.error}")
    top = [(t["label"], t["probability"]) if isinstance(t, dict) else (t[0], t[1]) for t in p.top_k]
    return Scored(label=str(p.label), confidence=float(p.confidence),
                  top_k=[(str(lbl), float(prob)) for lbl, prob in top],
                  ood_score=None if p.ood_score is None else float(p.ood_score))
