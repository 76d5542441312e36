"""Upload limits and decoding of untrusted images, each failure a 4xx with a one-line message.

  413  body over the upload limit (checked on Content-Length, then counted as it streams in),
       image over the pixel limit, or the request's images over its pixel budget (both checked
       on the headers of all its images, before any is decoded)
  415  not an image clarivis reads (Pillow, opened with the accepted formats only, cannot
       identify it), a DICOM volume, or DICOM on a server without the 'medical' extra
  422  empty file, truncated or corrupt image data, no `file` field
  429  too many requests carrying uploads at once, or too many images waiting for the model
       (batching.QueueFull); both with Retry-After

What a request can make the server hold: its body (the upload limit), the images it decodes one
at a time (one full-size frame, at most max_pixels, while it is reduced towards the model input;
data.io.load_image(reduce_all=True)) and the reduced images. Requests with a body are served
MAX_ACTIVE_UPLOADS at a time, so bodies in memory are bounded too.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from clarivis.data.io import READ_FORMATS, decoded_size, load_image
from clarivis.errors import ImageDecodeError
from clarivis.extras import MissingExtraError, needs
from clarivis.serve.batching import QueueFull
from clarivis.serve.settings import MAX_PIXELS, MAX_REQUEST_PIXELS  # the limits' defaults are Settings'

with needs("serve", "clarivis serve"):
    from fastapi import HTTPException
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

FIELD = "file"  # the multipart field name of every image
# Requests with a body served at once (read, decoded, waiting for the model, answered); more
# wait up to UPLOAD_WAIT_S for a turn, then get 429. Each holds at most its body (32 MB by
# default) and one full-size frame while decoding, so 64 bounds uploads in memory near 2 GB, the
# bound uvicorn's limit_concurrency=64 used to give by counting connections (idle ones too, which
# let 64 idle clients lock everyone out). 64 is two batches of 32 one-image requests: one in the
# model, the next one forming.
MAX_ACTIVE_UPLOADS = 64
# A turn comes within a request's time in the model when the server is merely busy; a longer
# wait means overload, which a client should hear about (429) rather than wait out.
UPLOAD_WAIT_S = 5.0
Window = tuple[float, float]  # a DICOM window (center, width), as spec.Preprocess.window


@dataclass
class Upload:
    """One decoded upload: what the model sees and what the prediction log keeps."""

    filename: str  # base name only: a client's path is never used, only shown
    data: bytes
    image: Image.Image  # RGB, upright, reduced towards the model's input size (2x its side or more)
    width: int  # as stored in the file, pixels
    height: int
    sha256: str


def decode_request(named_bytes: Sequence[tuple[str | None, bytes]], *, max_pixels: int = MAX_PIXELS,
                   max_request_pixels: int = MAX_REQUEST_PIXELS, reduce_to: int | None = None,
                   window: Window | None = None) -> list[Upload]:
    """All images of one request -> Uploads, or HTTPException 413/415/422 naming the file:
    check_request, then each image decoded in turn (decode_upload)."""
    sizes = check_request(named_bytes, max_pixels=max_pixels, max_request_pixels=max_request_pixels,
                          reduce_to=reduce_to)
    return [decode_upload(filename, data, max_pixels=max_pixels, reduce_to=reduce_to, index=index,
                          stored_size=size, window=window)
            for index, ((filename, data), size) in enumerate(zip(named_bytes, sizes, strict=True))]


def check_request(named_bytes: Sequence[tuple[str | None, bytes]], *, max_pixels: int = MAX_PIXELS,
                  max_request_pixels: int = MAX_REQUEST_PIXELS, reduce_to: int | None = None,
                  ) -> list[tuple[int, int]]:
    """(width, height) as stored of every image of a request, from their headers alone; or
    HTTPException naming the file: 422 empty, 415 not an accepted image, 413 over `max_pixels`,
    and 413 when the images would decode to more than `max_request_pixels` in all (a JPEG counts
    at the DCT scale it decodes at for `reduce_to`; DICOM as its Rows x Columns). Nothing is
    decoded here."""
    stored, total = [], 0
    for index, (filename, data) in enumerate(named_bytes):
        name = safe_filename(filename, index)
        if not data:
            raise HTTPException(422, f"{name}: empty file (0 bytes); send the image's bytes")
        with _refusals(name):
            size, (width, height) = decoded_size(data, max_pixels=max_pixels, reduce_to=reduce_to)
        stored.append(size)
        total += width * height
    if total > max_request_pixels:
        raise HTTPException(413, f"this request's {len(stored)} image(s) decode to {total / 1e6:.1f} MP "
                                 f"in all, over the {max_request_pixels / 1e6:g} MP limit of one request; "
                                 "send fewer or smaller images (JPEGs count at the scale they decode at)")
    return stored


def decode_upload(filename: str | None, data: bytes, *, max_pixels: int = MAX_PIXELS,
                  reduce_to: int | None = None, index: int = 0,
                  stored_size: tuple[int, int] | None = None, window: Window | None = None) -> Upload:
    """Bytes of one upload -> Upload, or HTTPException 413/415/422 naming the file.
    `stored_size`: (width, height) from the header when the caller has read it already.
    `window`: the model's DICOM window (Preprocess.window; None: each file's own)."""
    name = safe_filename(filename, index)
    if not data:
        raise HTTPException(422, f"{name}: empty file (0 bytes); send the image's bytes")
    with _refusals(name):
        if stored_size is None:
            stored_size, _ = decoded_size(data, max_pixels=max_pixels)
        image = load_image(data, max_pixels=max_pixels, reduce_to=reduce_to, reduce_all=True,
                           window=window)
    width, height = stored_size
    return Upload(filename=name, data=data, image=image, width=width, height=height,
                  sha256=hashlib.sha256(data).hexdigest())


@contextmanager
def _refusals(name: str) -> Iterator[None]:
    """A decoding failure of upload `name` as the HTTPException the module docstring lists."""
    try:
        yield
    except ImageDecodeError as err:
        raise HTTPException(_decode_status(err), f"{name}: {_reason(err)}") from None
    except MissingExtraError:  # a DICOM upload on a server without pydicom
        raise HTTPException(415, f"{name}: this server cannot read DICOM (the 'medical' extra is not "
                                 "installed); send a JPEG, PNG, ... image, or ask its operator to "
                                 "install the extra") from None


def _decode_status(err: ImageDecodeError) -> int:
    """load_image raises with no cause only for its own checks: empty input (handled before
    it), the pixel limit, and DICOM it refuses (a volume, no pixel data); the cause tells
    Pillow's and pydicom's failures apart."""
    cause = err.__cause__
    if cause is None:
        return 413 if "-pixel limit" in str(err) else 415
    if isinstance(cause, Image.DecompressionBombError):
        return 413
    if isinstance(cause, (UnidentifiedImageError, ModuleNotFoundError)):
        return 415  # not an image, or DICOM where data/dicom.py is not installed
    return 422


def _reason(err: ImageDecodeError) -> str:
    text = str(err).removeprefix("<bytes>: ")
    if "not an image file" in text:
        return f"{text}; send a {READ_FORMATS} image"
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
    """ASGI middleware for requests that carry uploads:

    - a body over `max_bytes` gets 413 before the app reads it: a declared Content-Length over
      the limit at once, a chunked body when it crosses the limit as it streams in;
    - requests with a body are served `max_active` at a time; the others wait up to `wait_s`
      for a turn, then get 429 (requests without a body, /healthz and every GET, never wait);
    - batching.QueueFull, raised by the batcher when too many images wait for the model,
      becomes 429 with Retry-After."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_active: int = MAX_ACTIVE_UPLOADS,
                 wait_s: float = UPLOAD_WAIT_S) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_active = max_active
        self.wait_s = wait_s
        self._turns = asyncio.Semaphore(max_active)  # bound to the server's loop on first use

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._drain(receive)
            await _refuse(send, 413, self._message(), close=True)
            return
        declared = int(length) if length is not None and length.isdigit() else 0
        has_body = declared > 0 or b"transfer-encoding" in headers
        if not has_body:
            await self._serve(scope, receive, send)  # no body: nothing held, no turn needed
            return
        try:
            async with asyncio.timeout(self.wait_s):
                await self._turns.acquire()
        except TimeoutError:
            await self._drain(receive)
            await _refuse(send, 429, f"server busy: {self.max_active} requests with uploads are in "
                                     "progress; retry in a second", retry_after_s=1, close=True)
            return
        try:
            await self._serve(scope, self._counted(receive), send)
        finally:
            self._turns.release()

    def _counted(self, receive: Receive) -> Receive:
        seen = 0

        async def counted_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:  # raised where the app reads the body: a plain 413
                    raise HTTPException(413, self._message())
            return message

        return counted_receive

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app, with QueueFull answered as 429 (when nothing has been sent yet)."""
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except QueueFull as full:
            if started:
                raise
            await _refuse(send, 429, full.detail, retry_after_s=full.retry_after_s)

    async def _drain(self, receive: Receive) -> None:
        """Read (and drop) the rest of the body, up to 4x the limit, so the client, which is
        still sending, reads our answer instead of a reset connection; beyond that we stop
        reading and the connection closes."""
        budget = 4 * self.max_bytes
        while budget > 0:
            message = await receive()
            if message["type"] != "http.request":
                return
            budget -= len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    def _message(self) -> str:
        return (f"request body over the {self.max_bytes / 1e6:g} MB upload limit; send smaller or "
                "fewer images")


async def _refuse(send: Send, status: int, detail: str, *, retry_after_s: int | None = None,
                  close: bool = False) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after_s is not None:
        headers.append((b"retry-after", str(retry_after_s).encode()))
    if close:  # the body was not read (or not all of it): the connection cannot be reused
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
