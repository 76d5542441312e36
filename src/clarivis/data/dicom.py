"""DICOM decoding (the 'medical' extra): one frame of a .dcm file to an 8-bit grey RGB image.

data.io.load_image sends DICOM files here (by extension or by their 128-byte preamble + "DICM"),
so training, predict, evaluate and the service see ordinary RGB pixels. The pipeline, as a
viewer shows the image (DICOM PS3.3 C.11):

    stored values -> modality LUT (RescaleSlope/Intercept or a Modality LUT Sequence)
                  -> VOI: an explicit window (center, width), else the file's own window (the
                     first when it lists several), else its VOI LUT Sequence, else the values'
                     own min..max
                  -> 0..255 (the VOI output range mapped linearly, as pydicom's apply_voi_lut
                     output range [y_min, y_max] would be)
                  -> MONOCHROME1 inverted (0 is white there) -> grey RGB.

Colour files (RGB, YBR: pydicom converts them to RGB) keep their colours; more than 8 bits a
sample is scaled from the BitsStored range. Volumes (NumberOfFrames > 1) are refused.

Patient identifiers never reach a message or a log: only the tags below are parsed at all
(pydicom's specific_tags), so PatientName, PatientID and the rest are never even read."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from clarivis.errors import ImageDecodeError
from clarivis.extras import MissingExtraError, install_hint

# The tags the decode needs; nothing else of the file is parsed (see the module docstring).
_PIXEL_TAGS = [
    "SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration", "NumberOfFrames",
    "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
    "PixelData", "FloatPixelData", "DoubleFloatPixelData", "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths", "RescaleSlope", "RescaleIntercept", "RescaleType",
    "ModalityLUTSequence", "VOILUTSequence", "WindowCenter", "WindowWidth", "VOILUTFunction",
]  # fmt: skip

Window = tuple[float, float]  # (center, width), in modality units (e.g. Hounsfield units for CT)


def decode_dicom(source: Path | BinaryIO, label: str, *, max_pixels: int,
                 window: Window | None = None) -> Image.Image:
    """One DICOM frame as an RGB image (module docstring), or ImageDecodeError (one line, no
    patient data); MissingExtraError when pydicom is not installed."""
    try:
        import pydicom
    except ModuleNotFoundError as err:
        raise MissingExtraError(f"{label}: reading DICOM needs the 'medical' extra: {_hint()}") from err
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut
    try:
        with warnings.catch_warnings():
            # pydicom warns about odd values it parses; only pixel tags are parsed, but its
            # warnings are not the user's errors either way.
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(source, specific_tags=_PIXEL_TAGS)
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            if frames > 1:
                raise ImageDecodeError(
                    f"{label}: DICOM volume of {frames} frames: volumes are not supported yet; "
                    "export single frames (one 2-D image a file)")
            rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
            if rows * cols > max_pixels:
                raise ImageDecodeError(f"{label}: {cols}x{rows} pixels exceeds the {max_pixels:,}-pixel "
                                       "limit (decompression bomb guard)")
            if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
                raise ImageDecodeError(f"{label}: DICOM file holds no image (no Pixel Data)")
            pixels = ds.pixel_array
            if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
                return _colour(pixels, int(ds.get("BitsStored", 8) or 8))
            values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
            gray = _voi_to_8bit(values, ds, window, apply_voi_lut)
            if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
                gray = 255 - gray  # MONOCHROME1: the lowest value is shown white
            return Image.fromarray(gray).convert("RGB")
    except (ImageDecodeError, MissingExtraError):
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom and its plugins raise many types on bad files
        raise ImageDecodeError(f"{label}: unreadable DICOM ({_reason(exc)})") from exc


def _voi_to_8bit(values: np.ndarray, ds: Any, window: Window | None, apply_voi_lut: Any) -> np.ndarray:
    """Modality values (float64, rows x cols) to uint8 through the VOI step (module docstring);
    `ds` is the pydicom Dataset (Any: pydicom is optional, so not imported for the annotation)."""
    if window is None and "WindowCenter" in ds and "WindowWidth" in ds:
        window = (_first(ds.WindowCenter), _first(ds.WindowWidth))
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    else:
        function = "LINEAR"  # an explicit window is the plain linear one
    if window is not None:
        return _windowed(values, window, function)
    if ds.get("VOILUTSequence"):
        # a lookup table: its output is 0..2**bits-1 (LUTDescriptor's third value, PS3.3 C.11.2.1.1)
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        out = np.asarray(apply_voi_lut(np.rint(values).astype(np.int64), ds, index=0), dtype=np.float64)
        return _scaled(out, 0.0, float(2**bits - 1))
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.shape, dtype=np.uint8)
    low, high = float(finite.min()), float(finite.max())
    if high <= low:  # a constant frame: blank stays black, any other constant is mid-grey (as io)
        return np.full(values.shape, 0 if high == 0 else 128, dtype=np.uint8)
    return _scaled(np.where(np.isfinite(values), values, low), low, high)


def _windowed(values: np.ndarray, window: Window, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 windowing with the output range 0..255 (pydicom's apply_windowing
    with y_min=0, y_max=255): LINEAR (the default), LINEAR_EXACT or SIGMOID."""
    center, width = float(window[0]), float(window[1])
    if function == "SIGMOID":
        if width <= 0:
            raise ValueError(f"window width must be positive for SIGMOID, got {width:g}")
        out = 255.0 / (1 + np.exp(-4 * (values - center) / width))
    else:
        if function != "LINEAR_EXACT":  # LINEAR: PS3.3 C.11.2.1.2.1
            if width < 1:
                raise ValueError(f"window width must be at least 1, got {width:g}")
            center, width = center - 0.5, width - 1
        elif width <= 0:
            raise ValueError(f"window width must be positive, got {width:g}")
        if width == 0:  # LINEAR with width 1: a threshold at the center
            out = np.where(values > center, 255.0, 0.0)
        else:
            out = ((values - center) / width + 0.5) * 255.0
    return np.clip(np.rint(np.nan_to_num(out, nan=0.0)), 0, 255).astype(np.uint8)


def _scaled(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """low..high linearly to 0..255 (rounded, clipped)."""
    return np.clip(np.rint((values - low) * (255.0 / (high - low))), 0, 255).astype(np.uint8)


def _colour(pixels: np.ndarray, bits_stored: int) -> Image.Image:
    """A colour frame (rows x cols x 3, already RGB from pydicom) as an RGB image, more than 8 bits
    scaled down from the 0..2**BitsStored-1 range."""
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise ValueError(f"unsupported DICOM colour layout {pixels.shape}")
    if pixels.dtype != np.uint8:
        pixels = _scaled(pixels.astype(np.float64), 0.0, float(2**bits_stored - 1))
    return Image.fromarray(np.ascontiguousarray(pixels), "RGB")


def _first(value: object) -> float:
    """The first value of a multi-valued element (a file may list several windows), as float."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0]  # type: ignore[index]
    return float(value)  # type: ignore[arg-type]


def _hint() -> str:
    """The command that installs the 'medical' extra of the distribution this module came with:
    clarivis, or the torch-free clarivis-runtime (packages/clarivis-runtime ships this module)."""
    from importlib import metadata

    for dist in ("clarivis", "clarivis-runtime"):
        try:
            metadata.distribution(dist)
        except metadata.PackageNotFoundError:
            continue
        return install_hint("medical").replace("clarivis[", f"{dist}[")
    return install_hint("medical")


def _reason(exc: Exception) -> str:
    """A short one-line reason (pydicom's messages name tags and plugins, never values of
    patient tags, which are never parsed)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def dicom_size(source: Path | BinaryIO, label: str) -> tuple[int, int]:
    """(width, height) = (Columns, Rows) of a DICOM file, read from its header (no pixels)."""
    width, height, _ = dicom_header(source, label)
    return width, height


def dicom_header(source: Path | BinaryIO, label: str) -> tuple[int, int, str]:
    """(width, height, mode) of a DICOM file from its header alone (no pixel data is read):
    mode is the Pillow mode decode_dicom gives it before RGB, "L" for grey (MONOCHROME1/2,
    whatever its bit depth: the window maps it to 8 bits) or "RGB" for colour. Only these tags
    are parsed (module docstring)."""
    try:
        import pydicom
    except ModuleNotFoundError as err:
        raise MissingExtraError(f"{label}: reading DICOM needs the 'medical' extra: {_hint()}") from err
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            where = None if isinstance(source, Path) else source.tell()
            ds = pydicom.dcmread(source, specific_tags=["Rows", "Columns", "SamplesPerPixel"],
                                 stop_before_pixels=True)
            if where is not None:
                source.seek(where)  # type: ignore[union-attr]  # load_image may read the same object next
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on bad files
        raise ImageDecodeError(f"{label}: unreadable DICOM ({_reason(exc)})") from exc
    mode = "RGB" if int(ds.get("SamplesPerPixel", 1) or 1) > 1 else "L"
    return int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0), mode
