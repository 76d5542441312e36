"""What predict-like commands take as input: files, folders (recursively), globs and in-memory
PIL images, expanded lazily and in sorted order. The one expansion: the Python API, the ONNX
runtime and batch prediction all walk inputs through here. Torch-free.

Which files of a folder are images (walk_images):
- a known image extension (data.io.IMAGE_EXTENSIONS): an image, decoded later;
- another extension, or none, whose header one of the decoders clarivis allows recognises (a
  JPEG saved as photo.jpg_large or IMG_0001, a DICOM file named IM0001): an image too, as a user
  expects of a file Pillow (or pydicom, for DICOM) reads;
- the extension of an image format clarivis does not read (.ico, .heic, .avif, camera raw...):
  an error entry that says so, because the user put an image there and gets no label for it;
- anything else (notes.txt, labels.csv): not an image, left out and reported to `on_skip` with
  the reason; hidden and system files (.DS_Store, ._photo.jpg, Thumbs.db) are left out and
  reported with no reason (callers count them and need not name them)."""

from __future__ import annotations

import glob
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from clarivis.data.io import ALLOWED_FORMATS, READ_FORMATS, is_dicom, is_image_path

ImageInput = str | Path | Image.Image


Entry = tuple[str, Image.Image | str | None]  # (source, PIL image | error message | None: decode path)
PathEntry = tuple[str, str | None]  # (path or input as given, error message | None: an image path)
# Called with (path, reason) for each file a folder walk leaves out; reason None: a hidden or
# system file.
SkipHandler = Callable[[str, str | None], None]

# Image formats people keep beside their photos that clarivis does not decode (data.io's
# ALLOWED_FORMATS: Pillow lacks some, others are kept out on purpose). A file with one of these
# extensions is an error row naming its format rather than a silently skipped file.
UNREAD_IMAGE_FORMATS: dict[str, str] = {
    ".ico": "ICO", ".cur": "CUR", ".icns": "ICNS",
    ".heic": "HEIC", ".heif": "HEIF", ".avif": "AVIF", ".jxl": "JPEG XL",
    ".jp2": "JPEG 2000", ".j2k": "JPEG 2000", ".jpx": "JPEG 2000", ".jpf": "JPEG 2000",
    ".svg": "SVG", ".psd": "Photoshop", ".xcf": "GIMP", ".tga": "TGA", ".pcx": "PCX",
    ".dds": "DDS", ".exr": "OpenEXR", ".hdr": "Radiance HDR", ".qoi": "QOI",
    ".dng": "camera raw", ".cr2": "camera raw", ".cr3": "camera raw", ".nef": "camera raw",
    ".arw": "camera raw", ".orf": "camera raw", ".rw2": "camera raw", ".raf": "camera raw",
}  # fmt: skip
# Files operating systems and file managers write into photo folders.
SYSTEM_FILES = frozenset({"thumbs.db", "ehthumbs.db", "desktop.ini", "icon\r"})


def expand_inputs(images: ImageInput | Iterable[ImageInput],
                  on_skip: SkipHandler | None = None) -> Iterator[Entry]:
    """Yield (source, PIL image), (path, None) or (source, error message) for every input,
    lazily: nothing is decoded here, and a folder is walked as it is consumed. `on_skip` hears
    of every file a folder walk leaves out (module docstring)."""
    if isinstance(images, (str, Path, Image.Image)):
        images = [images]
    for n, item in enumerate(images):
        if isinstance(item, Image.Image):
            yield f"<image {n}>", item
        else:
            yield from expand_path(str(item), on_skip)


def expand_path(item: str, on_skip: SkipHandler | None = None) -> Iterator[PathEntry]:
    """(image path, None) for every image a file, folder or glob names, in sorted-path order;
    (item, error message) for an input that yields no image (missing, empty, no match) or for a
    file in an image format clarivis does not read. A file named outright (or by a glob) is
    never left out: whatever it holds, it gets a row."""
    path = Path(item).expanduser()
    if path.is_dir():
        empty = True
        for entry in walk_images(str(path), on_skip):
            empty = False
            yield entry
        if empty:
            yield item, "folder holds no images"
    elif path.exists():
        yield str(path), _unread_format(str(path))
    elif glob.has_magic(item):
        # glob has no sorted lazy form, so the matched names are sorted in memory; a folder
        # among them is still walked lazily. Pass a folder rather than "**" for huge trees.
        matches = sorted(glob.glob(str(path), recursive=True))
        if not matches:
            yield item, "no files match this pattern"
        for match in matches:
            yield from (expand_path(match, on_skip) if Path(match).is_dir()
                        else [(match, _unread_format(match))])
    else:
        yield item, "file not found"


def walk_images(folder: str, on_skip: SkipHandler | None = None) -> Iterator[PathEntry]:
    """(path, None) for the image files below `folder`, depth first, in sorted-path order, and
    (path, error message) for files in an image format clarivis does not read; the other files
    go to `on_skip` (module docstring).

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
    for name, is_dir, path in sorted(entries):
        if is_dir:
            yield from walk_images(path, on_skip)
        elif not os.path.isfile(path):
            continue  # a symlinked folder (not entered, as above) or a broken link
        elif name.startswith(".") or name.lower() in SYSTEM_FILES:
            if on_skip is not None:
                on_skip(path, None)
        elif is_image_path(path):
            yield path, None
        elif _looks_like_image(path):
            yield path, None  # a known format behind an odd extension (or none)
        elif (error := _format_error(path)) is not None:
            yield path, error
        elif on_skip is not None:
            suffix = Path(name).suffix
            on_skip(path, f"not an image (extension {suffix})" if suffix else "not an image (no extension)")


@dataclass
class SkippedFiles:
    """A SkipHandler that counts what a walk left out and keeps the first few names, for one
    summary line: every left-out file is counted, none is held past `keep`."""

    keep: int = 5  # names kept, with their reasons
    not_images: int = 0  # files that are not images (named in `examples`, up to `keep`)
    hidden: int = 0  # hidden and system files (.DS_Store, Thumbs.db), counted but not named
    examples: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def __call__(self, path: str, reason: str | None) -> None:
        if reason is None:
            self.hidden += 1
            return
        self.not_images += 1
        if len(self.examples) < self.keep:
            self.examples.append((path, reason))

    def lines(self) -> list[str]:
        """One summary line, then one line per named file; nothing when no file other than
        hidden or system ones was left out (those are expected in any folder)."""
        if not self.not_images:
            return []
        one = self.not_images == 1
        text = f"skipped {self.not_images:,} " + ("file that is not an image" if one else
                                                  "files that are not images")
        if self.hidden:
            text += f" (and {self.hidden:,} hidden or system file{'' if self.hidden == 1 else 's'})"
        more = self.not_images - len(self.examples)
        return ([text + ":"] + [f"  {path}: {reason}" for path, reason in self.examples]
                + ([f"  and {more:,} more"] if more > 0 else []))


def _unread_format(path: str) -> str | None:
    """The error of a file named outright whose extension names an image format clarivis does
    not read, unless its header shows a format it does read; None for every other file."""
    error = _format_error(path)
    return None if error is None or _looks_like_image(path) else error


def _format_error(path: str) -> str | None:
    """The error row's message for an image format clarivis does not read (by extension)."""
    fmt = UNREAD_IMAGE_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        return None
    return f"{fmt} image: clarivis reads {READ_FORMATS}; convert it to one of them (e.g. PNG)"


def _looks_like_image(path: str) -> bool:
    """Whether one of the decoders clarivis allows recognises the file's header (the pixels are
    not decoded: Pillow reads the first bytes and the header), or a DICOM file by its preamble and
    "DICM" magic (scanners and PACS exports often name them IM0001, with no extension)."""
    if is_dicom(path):
        return True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's header warnings (bomb size, EXIF) are not ours
            with Image.open(path, formats=ALLOWED_FORMATS):
                return True
    except Image.DecompressionBombError:
        return True  # an image, and load_image's error row will say it is too large
    except Exception:  # noqa: BLE001 - Pillow raises many types on non-image data: all mean "no"
        return False


def _is_real_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False
