"""Labels and prompt templates -> one text embedding per class (prompt ensembling, CLIP §3.1.4):
each label is put into every template, each prompt embedded and L2-normalized, the prompts of a
class averaged and the average normalized again."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from clarivis.errors import ClarivisError
from clarivis.extras import needs

with needs("zeroshot", "CLIP (clarivis zeroshot, open_clip: models)"):
    import open_clip

# The default ensemble: 7 of the CLIP paper's 80 ImageNet templates, the subset OpenAI's notebook
# Prompt_Engineering_for_ImageNet.ipynb picked by sequential forward selection; open_clip ships it
# as SIMPLE_IMAGENET_TEMPLATES. It keeps most of the 80-template gain over the single "a photo
# of a {}." while the text tower runs 7 prompts a class instead of 80 (1000 classes: 7k text
# forward passes against 80k, an 11x shorter wait on a CPU).
DEFAULT_TEMPLATES: tuple[str, ...] = tuple(t("{}") for t in open_clip.SIMPLE_IMAGENET_TEMPLATES)
PROMPTS_PER_BATCH = 256  # prompts per text-tower forward pass: bounded memory for 1000s of classes


def parse_labels(labels: str | Path | Sequence[str]) -> list[str]:
    """Class labels from 'a cat,a dog', a text file with one label per line (blank lines and
    '#' comments skipped) or a list; empty or duplicate labels are errors."""
    if isinstance(labels, Path) or (isinstance(labels, str) and _looks_like_file(labels)):
        items = _read_lines(Path(labels), "labels")
    elif isinstance(labels, str):
        items = labels.split(",")
    else:
        items = list(labels)
    items = [str(item).strip() for item in items]
    if not any(items):
        raise ClarivisError("no labels given; pass --labels 'a cat,a dog' or a text file with one "
                            "label per line")
    if "" in items:
        raise ClarivisError(f"label {items.index('') + 1} of {len(items)} is empty; remove the "
                            "extra comma or blank entry")
    seen: set[str] = set()
    for item in items:
        if item in seen:
            raise ClarivisError(f"label '{item}' is given twice; each class needs one label")
        seen.add(item)
    if len(items) < 2:
        raise ClarivisError(f"only one label ('{items[0]}'); zero-shot classification chooses "
                            "between at least 2")
    return items


def read_templates(path: str | Path) -> list[str]:
    """Prompt templates from a text file, one a line, each with '{}' where the label goes."""
    return check_templates(_read_lines(Path(path), "templates"))


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


@torch.no_grad()
def class_text_embeddings(clip: nn.Module, tokenizer, labels: Sequence[str],
                          templates: Sequence[str], *, device: torch.device | str = "cpu") -> torch.Tensor:
    """float32 (C, D): per label, the renormalized mean of its L2-normalized prompt embeddings
    (open_clip's build_zero_shot_classifier does the ensembling)."""
    per_batch = max(1, PROMPTS_PER_BATCH // len(templates))  # classes per text forward pass
    weights = open_clip.build_zero_shot_classifier(
        clip, tokenizer, list(labels), list(templates), num_classes_per_batch=per_batch, device=device)
    return weights.T.float().contiguous()  # (D, C) -> (C, D)


def _looks_like_file(text: str) -> bool:
    if "," in text or "\n" in text:
        return False
    path = Path(text).expanduser()
    return path.is_file() or path.suffix.lower() in (".txt", ".csv", ".lst")


def _read_lines(path: Path, what: str) -> list[str]:
    path = path.expanduser()
    if not path.is_file():
        raise ClarivisError(f"{what} file {path} not found; pass an existing text file with one "
                            "entry per line")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ClarivisError(f"cannot read {what} file {path} ({type(err).__name__}); save it as "
                            "UTF-8 text") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
