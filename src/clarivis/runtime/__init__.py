"""clarivis.runtime: predict from an exported ModelBundle with numpy, Pillow and onnxruntime only
(no torch). `clarivis export runs/NAME/model` writes the model.onnx it needs.

    from clarivis.runtime import Predictor
    rows = Predictor("runs/NAME/model").predict(["cat.jpg", pil_image], top_k=3)
"""

from clarivis.runtime.predictor import (
    UNKNOWN_LABEL,
    Predictor,
    RuntimePrediction,
    expand_inputs,
    ood_score,
    predict_files,
    sigmoid,
    softmax,
)
from clarivis.runtime.preprocess import RuntimePreprocess, decode, normalize, resize

__all__ = [
    "UNKNOWN_LABEL", "Predictor", "RuntimePrediction", "RuntimePreprocess", "decode", "expand_inputs",
    "normalize", "ood_score", "predict_files", "resize", "sigmoid", "softmax",
]
