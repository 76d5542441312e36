"""Upload limits and decoding of untrusted images, each failure a 4xx with a one-line message.

  413  body over the upload limit (checked on Content-Length, then counted as it streams in),
       image over the pixel limit (checked on the header, before anything is decoded)
  415  not an image clarivis reads (Pillow cannot identify it, or a format outside the allowed ones)
  422  empty file, truncated or corrupt image data, no `file` field
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from clarivis.data.io import load_image
from clarivis.errors import ImageDecodeError
from clarivis.extras import needs
from clarivis.serve.settings import MAX_PIXELS  # the upload limits' defaults are Settings'

with needs("serve", "clarivis serve"):
    from fastapi import HTTPException
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

FIELD = "file"  # the multipart field name of every image


@dataclass
class Upload:
    """One decoded upload: what the model sees and what the prediction log keeps."""

    filename: str  # base name only: a client's path is never used, only shown
    data: bytes
    image: Image.Image  # RGB, upright, possibly reduced (JPEG draft) for the model's input size
    width: int  # as stored in the file, pixels
    height: int
    sha256: str


def decode_upload(filename: str | None, data: bytes, *, max_pixels: int = MAX_PIXELS,
                  reduce_to: int | None = None, index: int = 0) -> Upload:
    """Bytes of one upload -> Upload, or HTTPException 413/415/422 naming the file."""
    name = safe_filename(filename, index)
    if not data:
        raise HTTPException(422, f"{name}: empty file (0 bytes); send the image's bytes")
    try:
        with Image.open(io.BytesIO(data)) as header:  # header only: the size as stored
            width, height = header.size
    except Exception:  # noqa: BLE001 - Pillow raises many types; load_image below says which
        width = height = 0
    try:
        image = load_image(data, max_pixels=max_pixels, reduce_to=reduce_to)
    except ImageDecodeError as err:
        raise HTTPException(_decode_status(err), f"{name}: {_reason(err)}") from None
    return Upload(filename=name, data=data, image=image, width=width or image.width,
                  height=height or image.height, sha256=hashlib.sha256(data).hexdigest())


def _decode_status(err: ImageDecodeError) -> int:
    """load_image raises with no cause only for its own checks: empty input (handled before
    it) and the pixel limit; the cause tells Pillow's failures apart."""
    cause = err.__cause__
    if cause is None or isinstance(cause, Image.DecompressionBombError):
        return 413
    if isinstance(cause, UnidentifiedImageError):
        return 415
    return 422


def _reason(err: ImageDecodeError) -> str:
    text = str(err).removeprefix("<bytes>: ")
    if "not an image file" in text:
        return f"{text}; send a JPEG, PNG, WebP, BMP, GIF, TIFF or PNM image"
    if "pixel" in text:
        return f"{text}; downscale the image first"
    return text


def safe_filename(filename: str | None, index: int = 0) -> str:
    """A name for messages and responses: the last path part, printable, at most 100 characters.
    Clients may send '../../etc/passwd' or 'C:\\x\\y.jpg'; nothing is ever written under it."""
    base = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c for c in base if c.isprintable()).strip()[:100]
    return base or f"file {index + 1}"


class BodyLimit:
    """ASGI middleware: requests with a body over `max_bytes` get 413 before the app reads it.
    A declared Content-Length over the limit is refused at once; a chunked body is counted as
    it arrives and refused when it crosses the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._drain(receive)
            await self._too_large(send)
            return
        seen = 0

        async def counted_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:  # raised where the app reads the body: a plain 413
                    raise HTTPException(413, self._message())
            return message

        await self.app(scope, counted_receive, send)

    async def _drain(self, receive: Receive) -> None:
        """Read (and drop) the rest of the body, up to 4x the limit, so the client, which is
        still sending, reads our 413 instead of a reset connection; beyond that we stop reading
        and uvicorn closes the connection."""
        budget = 4 * self.max_bytes
        while budget > 0:
            message = await receive()
            if message["type"] != "http.request":
                return
            budget -= len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    async def _too_large(self, send: Send) -> None:
        body = json.dumps({"detail": self._message()}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    def _message(self) -> str:
        return (f"request body over the {self.max_bytes / 1e6:g} MB upload limit; send smaller or "
                "fewer images")
