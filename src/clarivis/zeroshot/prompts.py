"""Labels and prompt-template files as the zero-shot command takes them: 'a cat,a dog', a text
file with one a line, or a list. The templates themselves and their check live in
models/prompts.py; the text embeddings in models/clip.py."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from clarivis.errors import ClarivisError
from clarivis.models.prompts import check_templates


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
