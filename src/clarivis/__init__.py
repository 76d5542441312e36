"""clarivis: from a folder of labeled images to a classifier you can trust and ship."""

__version__ = "0.1.0"

from clarivis.api import Classifier, EvaluationResult, Prediction, TrainResult, train  # noqa: E402

__all__ = ["Classifier", "EvaluationResult", "Prediction", "TrainResult", "train", "__version__"]
