"""What predict-like commands take as input: files, folders (recursively), globs and in-memory
PIL images, expanded lazily and in sorted order. The one expansion: the Python API, the ONNX
runtime and batch prediction all walk inputs through here. Torch-free."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from PIL import Image

from clarivis.data.io import is_image_path

ImageInput = str | Path | Image.Image


Entry = tuple[str, Image.Image | str | None]  # (source, PIL image | error message | None: decode path)
PathEntry = tuple[str, str | None]  # (path or input as given, error message | None: an image path)


def expand_inputs(images: ImageInput | Iterable[ImageInput]) -> Iterator[Entry]:
    """Yield (source, PIL image), (path, None) or (source, error message) for every input,
    lazily: nothing is decoded here, and a folder is walked as it is consumed."""
    if isinstance(images, (str, Path, Image.Image)):
        images = [images]
    for n, item in enumerate(images):
        if isinstance(item, Image.Image):
            yield f"<image {n}>", item
        else:
            yield from expand_path(str(item))


def expand_path(item: str) -> Iterator[PathEntry]:
    """(image path, None) for every image a file, folder or glob names, in sorted-path order;
    (item, error message) for an input that yields no image (missing, empty, no match)."""
    path = Path(item).expanduser()
    if path.is_dir():
        empty = True
        for entry in walk_images(str(path)):
            empty = False
            yield entry
        if empty:
            yield item, "folder holds no images"
    elif path.exists():
        yield str(path), None
    elif glob.has_magic(item):
        # glob has no sorted lazy form, so the matched names are sorted in memory; a folder
        # among them is still walked lazily. Pass a folder rather than "**" for huge trees.
        matches = sorted(glob.glob(str(path), recursive=True))
        if not matches:
            yield item, "no files match this pattern"
        for match in matches:
            yield from (expand_path(match) if Path(match).is_dir() else [(match, None)])
    else:
        yield item, "file not found"


def walk_images(folder: str) -> Iterator[PathEntry]:
    """(path, None) for the image files below `folder`, depth first, in sorted-path order.

    Only one sorted listing per open folder level is held, never the whole tree, so the first
    image of a million-file tree comes without listing it all. Sorting each folder by name gives
    the order of sorted(Path objects) (compared part by part). Symlinked folders are not entered
    (no cycles), as Path.rglob. An unreadable folder is one (folder, error message) entry."""
    try:
        with os.scandir(folder) as listing:
            entries = [(e.name, _is_real_dir(e), e.path) for e in listing]
    except OSError as exc:  # an unreadable subfolder is one error row, not the end of the run
        yield folder, f"cannot list folder ({exc.strerror or exc})"
        return
    for _, is_dir, path in sorted(entries):
        if is_dir:
            yield from walk_images(path)
        elif is_image_path(path) and os.path.isfile(path):
            yield path, None


def _is_real_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False
