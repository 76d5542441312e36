"""The public Python API, re-exported: `train(...)` and `Classifier` (load, predict, evaluate),
and what they return. The CLI is a thin layer over these; the logic lives where each name is
defined."""

from __future__ import annotations

from clarivis.classifier import Classifier
from clarivis.evaluate.plots import save_evaluation
from clarivis.metrics import EvaluationResult
from clarivis.pipeline import train
from clarivis.prediction import Prediction
from clarivis.training.dispatch import TrainResult

__all__ = ["Classifier", "EvaluationResult", "Prediction", "TrainResult", "save_evaluation", "train"]
