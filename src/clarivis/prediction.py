"""What a prediction is, for every backend: torch (clarivis.api), onnxruntime (clarivis.runtime)
and the service; and which backends there are. Torch-free, so the runtime can share it and the
CLI's help reads it without importing torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from clarivis.errors import ClarivisError

UNKNOWN_LABEL = "unknown"  # the answer when the open-set check rejects an image
# What runs the model: torch (clarivis.Classifier) or onnx (the runtime's Predictor on the
# bundle's exported model.onnx); `predict --backend` and `serve --backend` take these names.
BACKENDS = ("torch", "onnx")


def check_backend(name: str) -> None:
    if name not in BACKENDS:
        raise ClarivisError(f"unknown backend '{name}'; choose one of {', '.join(BACKENDS)}")


@dataclass
class Prediction:
    """Top-k labels for one image; `error` is set (and the rest empty) when it was unreadable."""

    source: str  # file path, or "<image N>" for in-memory images
    label: str | None = None  # UNKNOWN_LABEL when the open-set check rejects the image
    confidence: float | None = None  # calibrated probability of the top class
    top_k: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None
    ood_score: float | None = None  # in-distribution score (higher: more like the training data)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["top_k"] = [{"label": lbl, "probability": p} for lbl, p in self.top_k]
        return d
