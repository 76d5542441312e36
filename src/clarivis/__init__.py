"""clarivis: from a folder of labeled images to a classifier you can trust and ship."""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

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


class _Package(types.ModuleType):
    """The torch-based API is imported on first use, so `import clarivis.runtime` (numpy, Pillow
    and onnxruntime only) never imports torch. `clarivis.train` is the function, as it always
    was: importing the subpackage clarivis.train (sys.modules) must not rebind the name."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "train" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)

    def __getattr__(self, name: str) -> Any:
        if name not in _LAZY:
            raise AttributeError(f"module 'clarivis' has no attribute {name!r}")
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        super().__setattr__(name, value)
        return value


sys.modules[__name__].__class__ = _Package
