"""Safe image decoding: the one place clarivis turns files or bytes into pixels."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
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
        ".dcm", ".dicom",  # DICOM (the 'medical' extra), decoded by data.dicom
    }
)  # fmt: skip
DICOM_EXTENSIONS: frozenset[str] = frozenset({".dcm", ".dicom"})
# A DICOM Part 10 file: a 128-byte preamble, then these 4 bytes (PS3.10 7.1); how a DICOM file
# without an extension (IM0001, as scanners and PACS exports name them) is recognised.
DICOM_MAGIC_OFFSET, DICOM_MAGIC = 128, b"DICM"

# 64 MP fits every camera and phone photo (8000x8000) and typical microscopy or satellite
# tiles, and caps one decoded RGB image at about 192 MB; anything larger is almost always
# a mistake or a decompression bomb. It sits below Pillow's own 89 MP warning threshold.
MAX_IMAGE_PIXELS: int = 64_000_000

# Only the decoders behind IMAGE_EXTENSIONS may run. Pillow would otherwise also try
# formats such as EPS (which shells out to Ghostscript) on untrusted uploads. "JPEG" also
# opens multi-picture phone JPEGs (MPO); naming "MPO" itself is a KeyError in Pillow.
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "DIB", "GIF", "TIFF", "PPM")
READ_FORMATS = "JPEG, PNG, WebP, BMP, GIF, TIFF, PNM or DICOM"  # ALLOWED_FORMATS + DICOM to a user

# Rows of a full frame converted or stretched at once (reduced decoding, high bit depth): about
# 1 MP a strip (8 MB as float64), so no step holds a converted or float64 copy of a whole frame.
_STRIP_PIXELS = 1_000_000
# Modes Image.reduce averages correctly as they are; others are converted strip by strip first
# (palette indices and 1-bit pixels cannot be averaged; "I;16*" has no reduce in Pillow).
_REDUCE_MODES = frozenset({"L", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "I", "F"})
# EXIF orientation -> the transpose that shows the image upright (as ImageOps.exif_transpose).
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
            4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
            6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}

# Modes holding more than 8 bits of grayscale (16-bit ints, 32-bit ints, floats).
_HIGH_DEPTH_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WHITE = (255, 255, 255, 255)


def is_image_path(path: str | Path) -> bool:
    """Whether the file name has an image extension clarivis reads (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def is_image_file(path: str | Path) -> bool:
    """is_image_path, or a DICOM file without an image extension: no extension at all, or a
    numeric one (UID-named exports such as 1.2.840.113619.2.55.1), and the DICM magic. Only those
    files are opened (132 bytes read), so indexing a folder of photos reads no file."""
    if is_image_path(path):
        return True
    suffix = Path(path).suffix
    return (not suffix or suffix[1:].isdigit()) and is_dicom(path)


def is_dicom(source: str | Path | bytes | BinaryIO) -> bool:
    """Whether `source` is a DICOM file: a .dcm/.dicom name, or (any other name, bytes, a
    seekable file object) the "DICM" magic after the 128-byte preamble. Reads 132 bytes at most;
    a file object is put back where it was."""
    if isinstance(source, (str, Path)):
        suffix = Path(source).suffix.lower()
        if suffix in DICOM_EXTENSIONS:
            return True
        if suffix in IMAGE_EXTENSIONS:
            return False  # a photo format by name: Pillow's, not worth opening twice
        try:
            with open(source, "rb") as file:
                head = file.read(DICOM_MAGIC_OFFSET + len(DICOM_MAGIC))
        except OSError:
            return False  # load_image's own open reports why
    elif isinstance(source, (bytes, bytearray, memoryview)):
        head = bytes(source[:DICOM_MAGIC_OFFSET + len(DICOM_MAGIC)])
    else:
        try:
            if not source.seekable():
                return False
            where = source.tell()
            head = source.read(DICOM_MAGIC_OFFSET + len(DICOM_MAGIC))
            source.seek(where)
        except (OSError, AttributeError, ValueError):
            return False
    return head[DICOM_MAGIC_OFFSET:DICOM_MAGIC_OFFSET + len(DICOM_MAGIC)] == DICOM_MAGIC


def load_image(
    source: str | Path | bytes | BinaryIO, *, max_pixels: int = MAX_IMAGE_PIXELS,
    reduce_to: int | None = None, reduce_all: bool = False,
    window: tuple[float, float] | None = None,
) -> Image.Image:
    """Decode an image fully into an upright RGB image, or raise ImageDecodeError.

    `reduce_to` (px, the model input side): a JPEG at least 4x that size on both sides is decoded
    at 1/2, 1/4 or 1/8 scale by libjpeg's DCT scaling, never below 2x `reduce_to` on either side,
    so the resize to the model input that follows still has twice the pixels it needs. A 3 MP
    photo for a 224 px model decodes 3x faster. Training, evaluation and predict all pass the
    model's input size, so they see the same pixels.

    `reduce_all` (with `reduce_to`; the service uses it): every other format too is shrunk by an
    integer box filter (Image.reduce) to no less than 2x `reduce_to` on its short side, straight
    after decoding and strip by strip, so only the decoder's own full-size frame ever exists and
    it is dropped before this returns; high bit depths are stretched on the reduced pixels with
    the full frame's range. Off by default: the CLI keeps the pixels training saw.

    DICOM (is_dicom; the 'medical' extra) is decoded by data.dicom: modality LUT, then `window`
    ((center, width) in modality units, e.g. Hounsfield units) or the file's own window, then
    8-bit grey RGB; `window` is ignored for other formats."""
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    label = _label(source)
    if is_dicom(source):
        image = _load_dicom(source, label, max_pixels, window)
        if reduce_all and reduce_to is not None:
            return _reduced_rgb(image, reduce_to)
        return image
    with _decoding(label), Image.open(_open_source(source, label), formats=ALLOWED_FORMATS) as img:
        _check_pixels(img.size, max_pixels, label)
        if reduce_to is not None and img.format == "JPEG":
            img.draft(img.mode, (2 * reduce_to, 2 * reduce_to))  # no-op when smaller than 4x
        # Animated GIF/WebP (and multi-page TIFF) open on their first frame; load() decodes
        # only that one, and a truncated file fails here rather than later in a DataLoader.
        img.load()
        if reduce_all and reduce_to is not None:
            return _reduced_rgb(img, reduce_to)
        # _upright returns a copy: the opened image itself dies when the `with` closes it.
        return to_rgb(_upright(img))


def _load_dicom(source: str | Path | bytes | BinaryIO, label: str, max_pixels: int,
                window: tuple[float, float] | None) -> Image.Image:
    """data.dicom's decode of one frame (its docstring)."""
    return _dicom_module(source, label).decode_dicom(_dicom_source(source), label, max_pixels=max_pixels,
                                                     window=window)


def _dicom_size(source: str | Path | bytes | BinaryIO, label: str) -> tuple[int, int]:
    """(Columns, Rows) of a DICOM file, from its header only."""
    return _dicom_module(source, label).dicom_size(_dicom_source(source), label)


def _dicom_module(source: str | Path | bytes | BinaryIO, label: str) -> ModuleType:
    """data.dicom, imported only when a DICOM file comes: pydicom is optional (the torch-free
    runtime wheel ships data/dicom.py too, with its own 'medical' extra), and an install without
    the module gets one line naming the extra. Empty and missing files fail first, with the same
    messages as other formats."""
    _open_source(source, label)  # empty inputs named as such
    if isinstance(source, (str, Path)):
        with _decoding(label):
            open(source, "rb").close()  # "file not found", "is a directory", "permission denied"
    try:
        from clarivis.data import dicom
    except ModuleNotFoundError as err:
        raise ImageDecodeError(f"{label}: reading DICOM needs the 'medical' extra: "
                               'pip install "clarivis[medical]"') from err
    return dicom


def _dicom_source(source: str | Path | bytes | BinaryIO) -> Path | BinaryIO:
    """What pydicom.dcmread accepts."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(source))
    return Path(source) if isinstance(source, str) else source


def decoded_size(source: str | Path | bytes | BinaryIO, *, max_pixels: int = MAX_IMAGE_PIXELS,
                 reduce_to: int | None = None) -> tuple[tuple[int, int], tuple[int, int]]:
    """((width, height) as stored, (width, height) load_image decodes), read from the header
    only: a JPEG's DCT scaling for `reduce_to` is known before any pixel is decoded. Raises
    ImageDecodeError as load_image does (not an accepted format, over `max_pixels`, unreadable)."""
    label = _label(source)
    if is_dicom(source):
        size = _dicom_size(source, label)
        _check_pixels(size, max_pixels, label)
        return size, size
    with _decoding(label), Image.open(_open_source(source, label), formats=ALLOWED_FORMATS) as img:
        _check_pixels(img.size, max_pixels, label)
        stored = img.size
        if reduce_to is not None and img.format == "JPEG":
            img.draft(img.mode, (2 * reduce_to, 2 * reduce_to))  # sets the size, decodes nothing
        return stored, img.size


def image_mode(source: str | Path | bytes) -> tuple[str, str, bool]:
    """(Pillow mode, format name, colour-key transparency) from the header alone, as the file is
    stored (before load_image converts it to RGB). DICOM: "L" (grey) or "RGB" and "DICOM", from
    its header tags (no pixel data read, no patient tag parsed). Raises ImageDecodeError."""
    label = _label(source)
    if is_dicom(source):
        _, _, mode = _dicom_module(source, label).dicom_header(_dicom_source(source), label)
        return mode, "DICOM", False
    with _decoding(label), Image.open(_open_source(source, label), formats=ALLOWED_FORMATS) as img:
        return img.mode, img.format or "", "transparency" in img.info


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
    if is_dicom(path):
        return _dicom_size(path, label)
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


def _stretch_to_rgb(image: Image.Image, value_range: tuple[float, float] | None = None) -> Image.Image:
    """Map the image's own min..max (or `value_range`, the full frame's when `image` is a reduced
    copy) to 0..255 so 12-bit-in-16-bit data is neither black nor clipped. Strip by strip: no
    float64 copy of a whole frame."""
    low, high = value_range if value_range is not None else _value_range(image)
    gray = np.zeros((image.height, image.width), dtype=np.uint8)
    if low is not None and high is not None:
        for top, strip in _strips(image):
            values = np.asarray(strip).astype(np.float64)
            values = np.where(np.isfinite(values), values, low)  # NaN/inf in float images: the minimum
            if high > low:
                rows = np.rint((values - low) * (255.0 / (high - low)))
                gray[top:top + strip.height] = np.clip(rows, 0, 255).astype(np.uint8)
            else:
                # A constant image has no range to stretch: an all-zero (blank) frame stays
                # black, any other constant becomes mid-grey.
                gray[top:top + strip.height] = 0 if high == 0 else 128
    return Image.fromarray(gray).convert("RGB")


def _value_range(image: Image.Image) -> tuple[float | None, float | None]:
    """(min, max) over the finite values of a high-depth image, strip by strip; (None, None)
    when it has none (an all-NaN float image stays black)."""
    low = high = None
    for _top, strip in _strips(image):
        values = np.asarray(strip)
        finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values.ravel()
        if finite.size:
            low = float(finite.min()) if low is None else min(low, float(finite.min()))
            high = float(finite.max()) if high is None else max(high, float(finite.max()))
    return low, high


def _strips(image: Image.Image, rows_multiple: int = 1) -> Iterator[tuple[int, Image.Image]]:
    """(top row, copy of rows top..top+n) over the image, about _STRIP_PIXELS each; n is a
    multiple of `rows_multiple` (a reduce factor), so reducing strip by strip equals reducing
    the whole."""
    rows = max(1, _STRIP_PIXELS // max(1, image.width * rows_multiple)) * rows_multiple
    for top in range(0, image.height, rows):
        yield top, image.crop((0, top, image.width, min(top + rows, image.height)))


def _reduced_rgb(image: Image.Image, reduce_to: int) -> Image.Image:
    """load_image's reduce_all: the decoded frame shrunk by the largest integer factor that keeps
    its short side at 2x `reduce_to` or more, then upright and RGB (as to_rgb would make it)."""
    factor = min(image.size) // (2 * reduce_to)
    if factor < 2:
        return to_rgb(_upright(image))
    value_range = _value_range(image) if image.mode in _HIGH_DEPTH_MODES else None
    small = _reduce(image, factor)
    orientation = _orientation(image)
    if orientation in _UPRIGHT:
        small = small.transpose(_UPRIGHT[orientation])
    if value_range is not None:
        return _stretch_to_rgb(small, value_range)
    return to_rgb(small)


def _reduce(image: Image.Image, factor: int) -> Image.Image:
    """Image.reduce(factor), strip by strip, in a mode whose pixels can be averaged: transparency
    becomes alpha, palettes become RGB(A), 1-bit becomes L, 16-bit becomes 32-bit integers."""
    mode = image.mode
    keyed = "transparency" in image.info and mode in ("1", "L", "P", "RGB")  # a colour key, as to_rgb
    if keyed or mode in ("P", "PA"):
        target = "RGBA" if keyed or mode == "PA" else "RGB"
    elif mode == "1":
        target = "L"
    elif mode in _HIGH_DEPTH_MODES:
        target = mode if mode in _REDUCE_MODES else "I"
    else:
        target = mode if mode in _REDUCE_MODES else "RGB"
    out = Image.new(target, (-(-image.width // factor), -(-image.height // factor)))
    for top, strip in _strips(image, factor):
        part = strip if strip.mode == target else strip.convert(target)
        out.paste(part.reduce(factor), (0, top // factor))
    return out


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8) of a loaded image; 1 when absent or unreadable (as _upright)."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001 - Pillow's EXIF parser raises many types on bad data
        return 1
    return orientation if isinstance(orientation, int) else 1
