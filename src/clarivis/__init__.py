"""clarivis: from a folder of labeled images to a classifier you can trust and ship."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from clarivis.spec import VERSION as __version__

# Public name -> the module that defines it, imported on first use (the lazy table); the CLI
# calls the package through these names, so a command's --help imports no torch. A name that
# differs from the function it stands for says "module:function". No name here may be a
# clarivis subpackage or module (explain, export, serve, ...): importing one rebinds
# clarivis.<name> to it (tests/test_init.py checks).
_LAZY = {
    "Classifier": "clarivis.api",
    "EvaluationResult": "clarivis.api",
    "Prediction": "clarivis.api",
    "TrainResult": "clarivis.api",
    "train": "clarivis.api",
    "save_evaluation": "clarivis.api",
    "embed": "clarivis.embeddings",
    "index_images": "clarivis.index",
    "search": "clarivis.index",
    "audit": "clarivis.evaluate.audit",
    "save_audit": "clarivis.evaluate.audit",
    "explain_images": "clarivis.explain:explain",
    "explain_overlay": "clarivis.explain",
    "write_report": "clarivis.report.html",
    "check_data": "clarivis.datacheck",
    "save_check": "clarivis.datacheck",
    "export_bundle": "clarivis.export",
    "save_bundle": "clarivis.models.bundle",
    "predict_rows": "clarivis.batch_predict.backends",
    "predict_to_file": "clarivis.batch_predict",
    "PredictProgress": "clarivis.batch_predict",
    "SuggestResult": "clarivis.active.suggest",
    "suggest": "clarivis.active.suggest",
    "zeroshot_classifier": "clarivis.zeroshot.classify",
    "zeroshot_classify": "clarivis.zeroshot.classify",
    "PretrainResult": "clarivis.ssl.run",
    "pretrain": "clarivis.ssl.run",
    "serve_model": "clarivis.serve.runner:serve",
    "monitor_report": "clarivis.serve.monitor",
    "write_review_csv": "clarivis.serve.monitor",
}
# every _LAZY name (a literal list: linters read it)
__all__ = ["Classifier", "EvaluationResult", "Prediction", "PredictProgress", "PretrainResult",
           "SuggestResult", "TrainResult", "audit", "check_data", "embed", "explain_images",
           "explain_overlay", "export_bundle", "index_images", "monitor_report", "predict_rows",
           "predict_to_file", "pretrain",
           "save_audit", "save_bundle", "save_check", "save_evaluation", "search", "serve_model",
           "suggest",
           "train", "write_report", "write_review_csv", "zeroshot_classifier", "zeroshot_classify",
           "__version__"]

if TYPE_CHECKING:
    from clarivis.active.suggest import SuggestResult, suggest
    from clarivis.api import Classifier, EvaluationResult, Prediction, TrainResult, save_evaluation, train
    from clarivis.batch_predict import PredictProgress, predict_to_file
    from clarivis.batch_predict.backends import predict_rows
    from clarivis.datacheck import check_data, save_check
    from clarivis.embeddings import embed
    from clarivis.evaluate.audit import audit, save_audit
    from clarivis.explain import explain as explain_images
    from clarivis.explain import explain_overlay
    from clarivis.export import export_bundle
    from clarivis.index import index_images, search
    from clarivis.models.bundle import save_bundle
    from clarivis.report.html import write_report
    from clarivis.serve.monitor import monitor_report, write_review_csv
    from clarivis.serve.runner import serve as serve_model
    from clarivis.ssl.run import PretrainResult, pretrain
    from clarivis.zeroshot.classify import zeroshot_classifier, zeroshot_classify


def __getattr__(name: str) -> Any:
    """The torch-based API is imported on first use (PEP 562), so `import clarivis.runtime`
    (numpy, Pillow and onnxruntime only) never imports torch."""
    if name not in _LAZY:
        raise AttributeError(f"module 'clarivis' has no attribute {name!r}")
    module_name, _, attribute = _LAZY[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] in ("clarivis", "torch", "torchvision", "timm"):
            # the clarivis-runtime distribution: clarivis.runtime only, no torch
            raise ImportError(f"clarivis.{name} needs the full package: pip install clarivis "
                              "(clarivis-runtime only predicts, with clarivis.runtime)") from None
        raise
    value = getattr(module, attribute or name)
    globals()[name] = value  # the next access skips this function
    return value
