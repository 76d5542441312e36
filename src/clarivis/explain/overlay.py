"""Heat-map overlays as PNG: the model's input on the left, the map blended over it on the
right, a caption (label, confidence, method) above both."""

from __future__ import annotations

import io
from functools import cache

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

PANEL = 224  # px a side at least: a 32 px model input is unreadable at its own size
ALPHA = 0.5  # weight of the colour map in the blend
CAPTION_PX = 16  # font size
COLORMAP = "jet"  # the usual CAM colour map: red = most evidence


def overlay_image(pixels: torch.Tensor | np.ndarray, heatmap: np.ndarray, caption: str) -> Image.Image:
    """uint8 (3, S, S) model input + float (S, S) map in [0, 1] -> RGB image, original | overlay."""
    rgb = np.asarray(pixels, dtype=np.uint8).transpose(1, 2, 0)  # (S, S, 3)
    side = max(PANEL, rgb.shape[0])
    image = Image.fromarray(rgb).resize((side, side), Image.Resampling.BILINEAR)
    # Resize the map as float ("F" mode), then colour it: smooth, not blocky, at any grid size.
    heat = Image.fromarray(np.asarray(heatmap, dtype=np.float32))
    heat = np.asarray(heat.resize((side, side), Image.Resampling.BILINEAR))
    levels = np.clip(heat * 255 + 0.5, 0, 255).astype(np.uint8)
    colored = _lut()[levels]  # (side, side, 3) uint8
    blend = (1 - ALPHA) * np.asarray(image, dtype=np.float32) + ALPHA * colored
    font = _font()
    bar = CAPTION_PX + 12
    canvas = Image.new("RGB", (2 * side + 8, side + bar), "white")
    canvas.paste(image, (0, bar))
    canvas.paste(Image.fromarray(np.round(blend).astype(np.uint8)), (side + 8, bar))
    ImageDraw.Draw(canvas).text((4, 5), _fit(caption, font, canvas.width - 8), fill="black", font=font)
    return canvas


def overlay_png(pixels: torch.Tensor | np.ndarray, heatmap: np.ndarray, caption: str) -> bytes:
    """The overlay as PNG bytes, for embedding in a report or an HTTP response."""
    buffer = io.BytesIO()
    # Default zlib level, not optimize=True: 23 ms of CPU instead of 148 for a 32 px input
    # (the report draws 8 at the end of every run), 4.5% more bytes.
    overlay_image(pixels, heatmap, caption).save(buffer, format="PNG")
    return buffer.getvalue()


@cache
def _lut() -> np.ndarray:
    """(256, 3) uint8 colours of COLORMAP (matplotlib, imported only when a PNG is drawn)."""
    from matplotlib import colormaps

    return np.round(colormaps[COLORMAP](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)


@cache
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=CAPTION_PX)  # Pillow's bundled font: no system fonts needed


def _fit(text: str, font, width: int) -> str:
    """`text`, cut with an ellipsis until it fits `width` px."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "...") > width:
        text = text[:-1]
    return text + "..."
