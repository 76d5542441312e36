"""What predict-like commands take as input: files, folders (recursively), globs and in-memory
PIL images, expanded lazily and in sorted order. Torch-free: the ONNX runtime shares it."""

from __future__ import annotations

import glob
from collections.abc import Iterable, Iterator
from pathlib import Path

from PIL import Image

from clarivis.data.io import is_image_path

ImageInput = str | Path | Image.Image


Entry = tuple[str, Image.Image | str | None]  # (source, PIL image | error message | None: decode path)


def expand_inputs(images: ImageInput | Iterable[ImageInput]) -> Iterator[Entry]:
    """Yield (source, PIL image), (path, None) or (source, error message) for every input,
    lazily: nothing is decoded here."""
    if isinstance(images, (str, Path, Image.Image)):
        images = [images]
    for n, item in enumerate(images):
        if isinstance(item, Image.Image):
            yield f"<image {n}>", item
            continue
        for path in _expand_path(str(item)):
            yield path if isinstance(path, tuple) else (path, None)


def _expand_path(item: str) -> Iterator[str | tuple[str, str]]:
    path = Path(item).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and is_image_path(p))
        if not files:
            yield item, "folder holds no images"
        yield from (str(p) for p in files)
    elif path.exists():
        yield str(path)
    elif glob.has_magic(item):
        matches = sorted(glob.glob(str(path), recursive=True))
        if not matches:
            yield item, "no files match this pattern"
        for m in matches:
            if Path(m).is_dir():
                yield from _expand_path(m)
            else:
                yield m
    else:
        yield item, "file not found"
