"""Small images for self-contained HTML pages (the data check, the labeling queue, the report's
gallery): thumbnails decoded reduced, and data: URIs that carry them inside the file."""

from __future__ import annotations

import base64
import io

from clarivis.data.io import load_image
from clarivis.errors import ImageDecodeError

# px, longest side, of a data-check finding: enough to recognise a shape or a mislabeled photo
FINDING_THUMBNAIL = 64


def data_uri(data: bytes, mime: str = "image/png") -> str:
    """Image bytes as a data: URI, so an HTML file carries its images inside it."""
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def thumbnail(path: str, size: int, fmt: str = "PNG") -> bytes | None:
    """The image at `path` as PNG or JPEG bytes, longest side `size` px (decoded reduced);
    None when it cannot be read (any more)."""
    try:
        image = load_image(path, reduce_to=size)
    except ImageDecodeError:
        return None
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return buffer.getvalue()
