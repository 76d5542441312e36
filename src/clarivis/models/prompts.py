"""Prompt templates for CLIP's text tower, torch-free: the default ensemble, the check that a
template takes one label, and class folder names as words; and the CLIP model zero-shot uses
when none is named. models/clip.py turns them into a text-initialized head; zeroshot/ reads
labels and template files on top of them."""

from __future__ import annotations

from collections.abc import Sequence

from clarivis.errors import ClarivisError

DEFAULT_CLIP = "ViT-B-32"  # 88M-parameter image tower, 4.4 GFLOPs at 224 px: fine on a CPU

# The default ensemble: 7 of the CLIP paper's 80 ImageNet templates, the subset OpenAI's notebook
# Prompt_Engineering_for_ImageNet.ipynb picked by sequential forward selection; open_clip ships it
# as SIMPLE_IMAGENET_TEMPLATES (written out here so this module needs no open_clip; a test checks
# the two agree). It keeps most of the 80-template gain over the single "a photo of a {}." while
# the text tower runs 7 prompts a class instead of 80 (1000 classes: 7k text forward passes
# against 80k, an 11x shorter wait on a CPU).
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)


def check_templates(templates: Sequence[str] | None) -> list[str]:
    """The templates given (DEFAULT_TEMPLATES for None), each checked to take one label."""
    if templates is None:
        return list(DEFAULT_TEMPLATES)
    templates = [str(t).strip() for t in templates if str(t).strip()]
    if not templates:
        raise ClarivisError("no prompt templates given; write one a line, e.g. 'a photo of a {}.'")
    for t in templates:
        try:
            filled = t.format("x")
        except (IndexError, KeyError, ValueError):
            filled = ""
        if t.count("{}") != 1 or filled != t.replace("{}", "x"):
            raise ClarivisError(f"template '{t}' must hold exactly one '{{}}' (where the label goes) "
                                "and no other braces")
    return templates


def prompt_label(class_name: str) -> str:
    """A class folder name as words for the prompt: 'golden_retriever' -> 'golden retriever'."""
    return " ".join(class_name.replace("_", " ").split())
