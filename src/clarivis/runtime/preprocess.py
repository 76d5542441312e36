"""The bundle's preprocessing in numpy + Pillow: the same pixels `Classifier.predict` feeds its
model, without torch. Decoding is shared with training (clarivis.data.io, which is torch-free);
the resize re-implements data/transforms.py (torchvision v2) with Pillow's resampling, which is
what torchvision's antialiased resize was modelled on (tests/runtime measure the difference)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clarivis.data.io import load_image, to_rgb
from clarivis.spec import BundleConfig, Preprocess

# Pillow filters for the bundle's `interpolation`. Pillow always antialiases when shrinking (its
# filter support grows with the scale), as torchvision's Resize(antialias=True) does.
_PIL_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


class RuntimePreprocess(Preprocess):
    """The bundle's Preprocess (spec.py), read from config.json as a plain dict."""

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> RuntimePreprocess:
        """config.json (dict) -> its preprocessing; ValueError on an unknown mode."""
        pp = BundleConfig.from_dict(config).preprocess
        return cls(**pp.to_dict())


def decode(source: str | Path | Image.Image, pp: Preprocess) -> Image.Image:
    """A file (upright RGB, JPEGs decoded reduced towards the model size exactly as predict does)
    or an in-memory PIL image (converted to RGB, not rotated: predict leaves those as given).
    DICOM files decode with the bundle's window (Preprocess.window; None: each file's own).
    Raises clarivis.errors.ImageDecodeError for unreadable files."""
    if isinstance(source, Image.Image):
        return to_rgb(source)
    return load_image(source, reduce_to=pp.img_size, window=pp.window)


def resize(image: Image.Image, pp: Preprocess) -> np.ndarray:
    """RGB image -> uint8 (S, S, 3), as data/transforms.py's resize_transform places pixels."""
    w, h = image.size
    s = pp.img_size
    if pp.resize_mode == "squash":
        return _array(_resize(image, s, s, pp))
    if pp.resize_mode == "crop":
        # torchvision's Resize(int): the shorter side becomes R = max(S, floor(S / crop_pct)),
        # the longer int(R * long / short) (truncated); then CenterCrop, which rounds its offsets
        # with Python's round (the size is spec.Preprocess.crop_resize_size).
        r = pp.crop_resize_size
        if w <= h:
            nw, nh = r, int(r * h / w)
        else:
            nw, nh = int(r * w / h), r
        resized = _array(_resize(image, nw, nh, pp))
        top, left = int(round((nh - s) / 2.0)), int(round((nw - s) / 2.0))
        return np.ascontiguousarray(resized[top:top + s, left:left + s])
    # pad: the longer side fits S, the rest is the mean colour (Letterbox).
    scale = s / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = _array(_resize(image, nw, nh, pp))
    out = np.empty((s, s, 3), dtype=np.uint8)
    out[:] = np.asarray(pp.fill, dtype=np.uint8)
    left, top = (s - nw) // 2, (s - nh) // 2
    out[top:top + nh, left:left + nw] = resized
    return out


def normalize(batch: np.ndarray, pp: Preprocess) -> np.ndarray:
    """uint8 (N, S, S, 3) -> float32 (N, 3, S, S), computed as Normalize does: (x - 255 mean)
    times 1 / (255 std), each constant rounded to float32 first, so the bits match."""
    mean = np.asarray(pp.mean, dtype=np.float32) * np.float32(255)
    inv_std = np.float32(1) / (np.asarray(pp.std, dtype=np.float32) * np.float32(255))
    x = (batch.astype(np.float32) - mean) * inv_std  # (N, S, S, 3), channels broadcast last
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _resize(image: Image.Image, width: int, height: int, pp: Preprocess) -> Image.Image | np.ndarray:
    if image.size == (width, height):
        return image  # torchvision returns the input unchanged too
    if pp.interpolation == "nearest":
        return _nearest(np.asarray(image), width, height)
    return image.resize((width, height), _PIL_FILTERS[pp.interpolation])


def _nearest(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """torch's "nearest": source index floor(dst * in / out) (Pillow samples pixel centres instead,
    which picks different pixels), antialias ignored as torchvision ignores it for nearest."""
    h, w = pixels.shape[:2]
    rows = np.minimum((np.arange(height) * (h / height)).astype(np.int64), h - 1)
    cols = np.minimum((np.arange(width) * (w / width)).astype(np.int64), w - 1)
    return pixels[rows[:, None], cols[None, :]]


def _array(image: Image.Image | np.ndarray) -> np.ndarray:
    return image if isinstance(image, np.ndarray) else np.asarray(image, dtype=np.uint8)
