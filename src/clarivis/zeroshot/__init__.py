"""Zero-shot image-text classification with open_clip: labels in words, no training images.

`load.py` finds and builds a CLIP model (open_clip name or model-config JSON, weights from a
file or the hub), `prompts.py` turns labels into averaged text embeddings, `classify.py`
predicts with them and saves the result as an ordinary ModelBundle.

Nothing is imported eagerly: clarivis.models.clip imports clarivis.zeroshot.load, and
classify.py imports clarivis.models.clip, so an eager import here would be circular."""

from __future__ import annotations

from typing import Any

_LAZY = {
    "zeroshot_classify": "clarivis.zeroshot.classify",
    "zeroshot_classifier": "clarivis.zeroshot.classify",
    "save_zeroshot_bundle": "clarivis.zeroshot.classify",
    "parse_labels": "clarivis.zeroshot.prompts",
    "DEFAULT_TEMPLATES": "clarivis.zeroshot.prompts",
}
__all__ = ["DEFAULT_TEMPLATES", "parse_labels", "save_zeroshot_bundle", "zeroshot_classifier",
           "zeroshot_classify"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'clarivis.zeroshot' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
