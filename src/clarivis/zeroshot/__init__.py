"""Zero-shot image-text classification with open_clip: labels in words, no training images.

`prompts.py` reads labels and template files, `classify.py` predicts with CLIP's text
classifier and saves the result as an ordinary ModelBundle. Finding, building and loading
open_clip models, the prompt ensembling and the CLIP classifier itself live in models/
(open_clip.py, open_clip_hub.py, prompts.py, clip.py), which training shares."""

from __future__ import annotations

from clarivis.models.prompts import DEFAULT_TEMPLATES
from clarivis.zeroshot.classify import save_zeroshot_bundle, zeroshot_classifier, zeroshot_classify
from clarivis.zeroshot.prompts import parse_labels

__all__ = ["DEFAULT_TEMPLATES", "parse_labels", "save_zeroshot_bundle", "zeroshot_classifier",
           "zeroshot_classify"]
