"""What the service predicts with: torch (clarivis.Classifier) or ONNX (clarivis.runtime.Predictor),
behind one small protocol. Both take decoded RGB PIL images, so the service decodes uploads once,
safely, whatever runs the model; and both take pixels a client preprocessed itself (the Open
Inference Protocol's FP32 input: float32 [N, 3, S, S], normalised as the bundle says), scored with
the same temperature and open-set check as images.

The torch side is reached through the lazy facade (`clarivis.Classifier`), so a service on
`--backend onnx` never imports torch: it runs from the runtime's dependencies and the web stack."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

import clarivis
from clarivis.errors import ModelError
from clarivis.prediction import UNKNOWN_LABEL, check_backend, multilabel_prediction
from clarivis.runtime import Predictor, ood_score, sigmoid, softmax
from clarivis.spec import ONNX_NAME, BundleConfig


@dataclass
class Scored:
    """One image's answer, whichever backend gave it. A multi-label model's (see
    clarivis.prediction.Prediction): `labels` the set, most probable first; `label` its names
    joined by LABEL_SEP ("" for none); `confidence` the highest probability of any class."""

    label: str  # "unknown" when the open-set check rejects the image
    confidence: float  # calibrated probability of the top class
    top_k: list[tuple[str, float]]
    ood_score: float | None = None
    labels: list[tuple[str, float]] | None = None  # multi-label models only


class Backend(Protocol):
    name: str

    def predict(self, images: list[Image.Image], top_k: int) -> list[Scored]: ...

    def predict_pixels(self, pixels: np.ndarray, top_k: int) -> list[Scored]:
        """float32 (N, 3, S, S), preprocessed and normalised as the bundle says -> one Scored each."""
        ...


class TorchBackend:
    """clarivis.Classifier: the reference implementation (any device torch has)."""

    name = "torch"

    def __init__(self, classifier: Any) -> None:  # a clarivis.Classifier
        self.classifier = classifier

    def predict(self, images: list[Image.Image], top_k: int) -> list[Scored]:
        return [_scored(p) for p in self.classifier.predict(images, top_k=top_k, batch_size=len(images))]

    def predict_pixels(self, pixels: np.ndarray, top_k: int) -> list[Scored]:
        import torch  # here: the onnx backend's service never imports torch

        logits = self.classifier.logits(torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)))
        c = self.classifier.config
        if c.multilabel:
            return score_multilabel(logits.numpy(), c, top_k=top_k)
        return score_logits(logits.numpy(), self.classifier.class_names, temperature=c.temperature,
                            ood=c.ood or None, reject=self.classifier.reject, top_k=top_k)


class OnnxBackend:
    """clarivis.runtime.Predictor on the bundle's exported model.onnx (no torch in the model call)."""

    name = "onnx"

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self.config = BundleConfig.from_dict(predictor.config)

    def predict(self, images: list[Image.Image], top_k: int) -> list[Scored]:
        return [_scored(p) for p in self.predictor.predict(images, top_k=top_k)]

    def predict_pixels(self, pixels: np.ndarray, top_k: int) -> list[Scored]:
        p = self.predictor
        if self.config.multilabel:
            return score_multilabel(p.predict_pixels(pixels), self.config, top_k=top_k)
        return score_logits(p.predict_pixels(pixels), p.class_names, temperature=p.temperature,
                            ood=p.ood, reject=p.reject, top_k=top_k)


def load_backend(name: str, model_dir: str | Path, device: str | None = None,
                 threads: int | None = None) -> Backend:
    """The bundle's model for the service. `threads`: the model's intra-op threads in this process
    [the library's default, one per core]; `--workers N` gives each worker cores / N, so workers
    do not fight over the same cores. onnxruntime's pool never spins here (see Predictor)."""
    folder = Path(model_dir)
    if name == "onnx" and not (folder / ONNX_NAME).is_file():  # the service's advice
        raise ModelError(f"{folder} has no {ONNX_NAME}; run clarivis export {folder} first, "
                         "or serve with --backend torch")
    check_backend(name)
    if name == "onnx":
        return OnnxBackend(Predictor(folder, reject=True, threads=threads, spin=False))
    if threads is not None:
        import torch  # here: the onnx backend's service never imports torch

        torch.set_num_threads(max(1, threads))  # per process: each worker is its own process
    return TorchBackend(clarivis.Classifier.load(folder, device=device, reject=True))


def score_logits(logits: np.ndarray, class_names: list[str], *, temperature: float, ood: dict | None,
                 reject: bool, top_k: int) -> list[Scored]:
    """(N, C) raw logits -> Scored, as both backends' predict do after their forward pass:
    probabilities calibrated by the temperature, the top k best first (ties in class order), and
    the open-set score, below whose threshold the label is "unknown" when `reject`."""
    logits = np.asarray(logits, dtype=np.float32)
    probs = softmax(logits / np.float32(temperature))  # (N, C)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :min(top_k, len(class_names))]
    scores = ood_score(logits, temperature, ood["score"]) if ood else None
    out = []
    for n in range(len(logits)):
        top = [(class_names[i], float(probs[n, i])) for i in order[n]]
        score = None if scores is None else float(scores[n])
        rejected = reject and score is not None and score < float(ood["threshold"])  # type: ignore[index]
        out.append(Scored(label=UNKNOWN_LABEL if rejected else top[0][0], confidence=top[0][1], top_k=top,
                          ood_score=score))
    return out


def score_multilabel(logits: np.ndarray, config: BundleConfig, *, top_k: int) -> list[Scored]:
    """A multi-label model's (N, C) raw logits -> Scored: sigmoid(logit_c / T_c + b_c) a class,
    then clarivis.prediction.multilabel_prediction, the rule every backend's predict follows."""
    probs = sigmoid(np.asarray(logits, dtype=np.float32) /  # as the runtime does
                    np.asarray(config.label_temperatures(), dtype=np.float32)
                    + np.asarray(config.label_biases(), dtype=np.float32))
    thresholds, k = config.label_thresholds(), min(top_k, config.num_classes)
    return [_scored(multilabel_prediction("<pixels>", row.tolist(), config.class_names, thresholds, k))
            for row in probs]


def _scored(p: Any) -> Scored:
    """A clarivis Prediction (or the runtime's equivalent) -> Scored. Images reach the backend
    decoded, so an `error` here is a bug, not bad input: it fails the batch."""
    if getattr(p, "error", None):
        raise RuntimeError(f"the model could not score a decoded image: {p.error}")
    labels = getattr(p, "labels", None)
    return Scored(label=str(p.label), confidence=float(p.confidence), top_k=_pairs(p.top_k),
                  ood_score=None if p.ood_score is None else float(p.ood_score),
                  labels=None if labels is None else _pairs(labels))


def _pairs(items: Any) -> list[tuple[str, float]]:
    """(label, probability) pairs from tuples or {"label", "probability"} dicts (a runtime's)."""
    pairs = [(t["label"], t["probability"]) if isinstance(t, dict) else (t[0], t[1]) for t in items]
    return [(str(lbl), float(prob)) for lbl, prob in pairs]
