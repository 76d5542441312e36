"""Safe image decoding: the one place clarivis turns files or bytes into pixels."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from clarivis.errors import ImageDecodeError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".jfif",
        ".png",
        ".webp",
        ".bmp", ".dib",
        ".gif",
        ".tif", ".tiff",
        ".pbm", ".pgm", ".ppm", ".pnm",
    }
)  # fmt: skip

# 64 MP fits every camera and phone photo (8000x8000) and typical microscopy or satellite
# tiles, and caps one decoded RGB image at about 192 MB; anything larger is almost always
# a mistake or a decompression bomb. It sits below Pillow's own 89 MP warning threshold.
MAX_IMAGE_PIXELS: int = 64_000_000

# Only the decoders behind IMAGE_EXTENSIONS may run. Pillow would otherwise also try
# formats such as EPS (which shells out to Ghostscript) on untrusted uploads. "JPEG" also
# opens multi-picture phone JPEGs (MPO); naming "MPO" itself is a KeyError in Pillow.
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "DIB", "GIF", "TIFF", "PPM")

# Modes holding more than 8 bits of grayscale (16-bit ints, 32-bit ints, floats).
_HIGH_DEPTH_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WHITE = (255, 255, 255, 255)


def is_image_path(path: str | Path) -> bool:
    """Whether the file name has an image extension clarivis reads (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def load_image(
    source: str | Path | bytes | BinaryIO, *, max_pixels: int = MAX_IMAGE_PIXELS,
    reduce_to: int | None = None,
) -> Image.Image:
    """Decode an image fully into an upright RGB image, or raise ImageDecodeError.

    `reduce_to` (px, the model input side): a JPEG at least 4x that size on both sides is decoded
    at 1/2, 1/4 or 1/8 scale by libjpeg's DCT scaling, never below 2x `reduce_to` on either side,
    so the resize to the model input that follows still has twice the pixels it needs. A 3 MP
    photo for a 224 px model decodes 3x faster. Training, evaluation and predict all pass the
    model's input size, so they see the same pixels."""
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    label = _label(source)
    with _decoding(label), Image.open(_open_source(source, label), formats=ALLOWED_FORMATS) as img:
        _check_pixels(img.size, max_pixels, label)
        if reduce_to is not None and img.format == "JPEG":
            img.draft(img.mode, (2 * reduce_to, 2 * reduce_to))  # no-op when smaller than 4x
        # Animated GIF/WebP (and multi-page TIFF) open on their first frame; load() decodes
        # only that one, and a truncated file fails here rather than later in a DataLoader.
        img.load()
        # _upright returns a copy: the opened image itself dies when the `with` closes it.
        return to_rgb(_upright(img))


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB deliberately (alpha over white, high bit depth stretched)."""
    mode = image.mode
    if mode in _ALPHA_MODES:
        return _composite_on_white(image)
    if mode in _HIGH_DEPTH_MODES:
        # A 16-bit tRNS colour key is rare enough to ignore; the bit depth is not.
        return _stretch_to_rgb(image)
    if "transparency" in image.info:
        # P with a transparent palette entry, or an L/RGB PNG colour key.
        return _composite_on_white(image)
    if mode == "RGB":
        return image
    # L, 1, P, CMYK, YCbCr, LAB, HSV and the rest: Pillow's own conversions are right.
    return image.convert("RGB")


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) as displayed (after EXIF orientation), read from the header only."""
    label = str(path)
    with _decoding(label), Image.open(_open_source(path, label), formats=ALLOWED_FORMATS) as img:
        width, height = img.size
        # Orientations 5-8 rotate by 90 degrees, so the stored width is the shown height.
        if _header_orientation(img) in (5, 6, 7, 8):
            return height, width
        return width, height


def _label(source: str | Path | bytes | BinaryIO) -> str:
    """What error messages call the source: its path, or '<bytes>'."""
    if isinstance(source, (str, Path)):
        return str(source)
    name = getattr(source, "name", None)
    return name if isinstance(name, str) else "<bytes>"


def _open_source(source: str | Path | bytes | BinaryIO, label: str) -> Path | BinaryIO:
    """Something Image.open accepts; empty inputs are named as such rather than 'not an image'."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageDecodeError(f"{label}: empty input (0 bytes)")
        return io.BytesIO(source)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_file() and path.stat().st_size == 0:
            raise ImageDecodeError(f"{label}: empty file (0 bytes)")
        return path
    return source


def _check_pixels(size: tuple[int, int], max_pixels: int, label: str) -> None:
    """Reject images whose header claims too many pixels, before anything is decoded."""
    width, height = size
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"{label}: {width}x{height} pixels exceeds the {max_pixels:,}-pixel limit "
            "(decompression bomb guard)"
        )


@contextmanager
def _decoding(label: str) -> Iterator[None]:
    """Turn whatever Pillow or the OS raises while decoding into a one-line ImageDecodeError."""
    try:
        with warnings.catch_warnings():
            # Our own max_pixels check is the authority below Pillow's hard limit, so its
            # warning is noise here. "ignore" (not "error") because catch_warnings is not
            # thread-safe, and a leaked "ignore" filter is harmless where "error" is not.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except ImageDecodeError:
        raise
    except Exception as exc:  # Pillow raises many types on hostile input; all mean "unreadable"
        raise ImageDecodeError(f"{label}: {_reason(exc)}") from exc


def _reason(exc: Exception) -> str:
    """A short, one-line reason for a decoding failure."""
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not an image file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, Image.DecompressionBombError):
        return f"too many pixels for Pillow's decompression bomb guard ({_one_line(exc)})"
    if isinstance(exc, MemoryError):
        return "not enough memory to decode it"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image file (Pillow cannot identify it)"
    if isinstance(exc, OSError) and exc.errno is not None:
        # Errors from the operating system carry an errno; Pillow's decoder errors do not.
        return f"cannot read file ({exc.strerror})"
    return f"truncated or corrupt image data ({_one_line(exc)})"


def _one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def _upright(img: Image.Image) -> Image.Image:
    """A copy of the loaded image, turned as its EXIF orientation says."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - Pillow's EXIF parser raises many types on bad data
        # Broken metadata should not cost a readable image: keep it as stored, which is
        # also what _header_orientation reports for it.
        return img.copy()


def _header_orientation(img: Image.Image) -> int:
    """The EXIF orientation (1-8) known without decoding pixels; 1 when absent or unreadable."""
    try:
        exif = _header_exif(img)
    except Exception:  # noqa: BLE001 - broken metadata: treated as upright, as in _upright
        return 1
    orientation = exif.get(ExifTags.Base.Orientation, 1)
    return orientation if isinstance(orientation, int) else 1


def _header_exif(img: Image.Image) -> Image.Exif:
    """The EXIF tags readable from the header."""
    if img.format == "PNG":
        # PngImageFile.getexif() decodes the whole image to look for a late eXIf chunk;
        # an eXIf chunk placed before the pixel data (as Pillow writes it) is already in info.
        exif = Image.Exif()
        raw = img.info.get("exif")
        if raw:
            exif.load(raw)
        return exif
    return img.getexif()


def _composite_on_white(image: Image.Image) -> Image.Image:
    """Flatten transparency onto white so transparent areas do not turn into black garbage."""
    rgba = image.convert("RGBA") if image.mode != "La" else image.convert("LA").convert("RGBA")
    background = Image.new("RGBA", rgba.size, _WHITE)
    return Image.alpha_composite(background, rgba).convert("RGB")


def _stretch_to_rgb(image: Image.Image) -> Image.Image:
    """Map the image's own min..max to 0..255 so 12-bit-in-16-bit data is neither black nor clipped."""
    values = np.asarray(image).astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        gray = np.zeros(values.shape, dtype=np.uint8)
    else:
        low, high = values[finite].min(), values[finite].max()
        values = np.where(finite, values, low)  # NaN/inf in float images become the minimum
        if high > low:
            gray = np.rint((values - low) * (255.0 / (high - low))).astype(np.uint8)
        else:
            # A constant image has no range to stretch: an all-zero (blank) frame stays
            # black, any other constant becomes mid-grey.
            gray = np.full(values.shape, 0 if high == 0 else 128, dtype=np.uint8)
    return Image.fromarray(gray).convert("RGB")
