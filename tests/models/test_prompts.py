"""CLIP's prompt templates (models/prompts.py): the default ensemble, the one-label check, class
folder names as words."""

from __future__ import annotations

import open_clip
import pytest

from clarivis.errors import ClarivisError
from clarivis.models.prompts import DEFAULT_TEMPLATES, check_templates, prompt_label


def test_templates():
    assert len(DEFAULT_TEMPLATES) == 7 and all(t.count("{}") == 1 for t in DEFAULT_TEMPLATES)
    assert check_templates(None) == list(DEFAULT_TEMPLATES)
    for bad in ("a photo", "{} and {}", "a {0}", "a {} of {x}"):
        with pytest.raises(ClarivisError, match="exactly one"):
            check_templates([bad])


def test_default_templates_are_open_clips_simple_imagenet_templates():
    """Written out so models/prompts.py needs no open_clip; they must stay open_clip's list."""
    assert DEFAULT_TEMPLATES == tuple(t("{}") for t in open_clip.SIMPLE_IMAGENET_TEMPLATES)


def test_class_folder_names_become_words():
    assert prompt_label("golden_retriever") == "golden retriever"
    assert prompt_label("  tabby__cat ") == "tabby cat"
