"""clarivis: from a folder of labeled images to a classifier you can trust and ship."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from clarivis.spec import VERSION as __version__

# Public name -> the module that defines it, imported on first use (the lazy table).
_LAZY = {
    "Classifier": "clarivis.api",
    "EvaluationResult": "clarivis.api",
    "Prediction": "clarivis.api",
    "TrainResult": "clarivis.api",
    "train": "clarivis.api",
    "embed": "clarivis.embeddings",
    "SuggestResult": "clarivis.active.suggest",
    "suggest": "clarivis.active.suggest",
    "zeroshot_classify": "clarivis.zeroshot.classify",
    "PretrainResult": "clarivis.ssl.run",
    "pretrain": "clarivis.ssl.run",
}
# every _LAZY name (a literal list: linters read it)
__all__ = ["Classifier", "EvaluationResult", "Prediction", "PretrainResult", "SuggestResult", "TrainResult",
           "embed", "pretrain", "suggest", "train", "zeroshot_classify", "__version__"]

if TYPE_CHECKING:
    from clarivis.active.suggest import SuggestResult, suggest
    from clarivis.api import Classifier, EvaluationResult, Prediction, TrainResult, train
    from clarivis.embeddings import embed
    from clarivis.ssl.run import PretrainResult, pretrain
    from clarivis.zeroshot.classify import zeroshot_classify


def __getattr__(name: str) -> Any:
    """The torch-based API is imported on first use (PEP 562), so `import clarivis.runtime`
    (numpy, Pillow and onnxruntime only) never imports torch."""
    if name not in _LAZY:
        raise AttributeError(f"module 'clarivis' has no attribute {name!r}")
    try:
        module = importlib.import_module(_LAZY[name])
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] in ("clarivis", "torch", "torchvision", "timm"):
            # the clarivis-runtime distribution: clarivis.runtime only, no torch
            raise ImportError(f"clarivis.{name} needs the full package: pip install clarivis "
                              "(clarivis-runtime only predicts, with clarivis.runtime)") from None
        raise
    value = getattr(module, name)
    globals()[name] = value  # the next access skips this function
    return value
