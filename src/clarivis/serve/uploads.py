"""The images of a request, read and decoded: the `file` fields of a multipart form, or one image
as the raw body (Content-Type image/..., application/dicom or application/octet-stream, its name
in X-Filename). DICOM is recognised by its bytes (the DICM magic), whatever the type says.
Any bad file fails the whole request, before the model runs, with the 4xx limits gives.

Every way a request carries images (multipart, raw body, v2 BYTES) ends in decode_all: the
headers of all images are checked first (formats, pixel limits, the request's pixel budget), then
they are decoded in a worker thread, one at a time, at most DECODERS requests at once per process.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from urllib.parse import unquote

from clarivis.extras import needs
from clarivis.serve import limits
from clarivis.serve.settings import Settings

with needs("serve", "clarivis serve"):
    from fastapi import HTTPException, Request
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile

# Content types of a raw image body. The bytes decide the format (Pillow reads the header, with
# the accepted formats only); the type only says "this body is one image".
RAW_TYPES = ("image/jpeg", "image/png", "image/webp", "image/bmp", "image/gif", "image/tiff",
             "image/x-portable-anymap", "application/dicom", "application/octet-stream")
FILENAME_HEADER = "X-Filename"  # a raw body's file name (percent-encoded if not ASCII)
RAW_NAME = "upload"  # ... when the client sends none
# Requests decoding at once in one process. Decoding is CPU work (more threads than cores only
# share them) and each decode holds one full-size frame (up to max_pixels, ~256 MB at 64 MP in
# RGBA) while it is reduced, so 4 bound that near 1 GB; a phone JPEG decodes at 1/8 scale in
# milliseconds, so 4 keep up with any model on CPU. Requests beyond wait on the event loop, not
# in the thread pool, which /metrics, /v1/model and the prediction log share.
DECODERS = min(4, os.cpu_count() or 1)
# A request this small (bytes and stored pixels) is decoded on the event loop: measured ~0.3 ms of
# CPU saved a 32 px request (two thread-pool hops), while 256 KP decode in ~1-2 ms at most.
INLINE_BYTES = 64_000
INLINE_PIXELS = 256 * 1024
_decoder_turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary())


async def read_uploads(request: Request, settings: Settings, img_size: int, *,
                       window: limits.Window | None = None) -> list[limits.Upload]:
    """Every image of the request, decoded and reduced towards `img_size` (the model's input);
    DICOM with `window` (the model's Preprocess.window; None: each file's own)."""
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "multipart/form-data":
        named = await _form_files(request, settings)
    elif media_type.startswith("image/") or media_type in RAW_TYPES:
        name = unquote(request.headers.get(FILENAME_HEADER, "")) or RAW_NAME
        named = [(name, await request.body())]
    else:
        raise HTTPException(415, f"send images as multipart/form-data in field '{limits.FIELD}', or one "
                                 "image as the body with Content-Type image/jpeg, image/png, ... or "
                                 f"application/octet-stream (got '{content_type[:60] or 'none'}')")
    return await decode_all(named, settings, img_size, window=window)


async def _form_files(request: Request, settings: Settings) -> list[tuple[str | None, bytes]]:
    async with request.form(max_files=settings.max_files, max_fields=settings.max_files) as form:
        items = form.getlist(limits.FIELD)
        if not items:
            got = ", ".join(k[:30] for k in sorted(set(form.keys()))[:5])
            raise HTTPException(422, f"no images: send each image in multipart field '{limits.FIELD}'"
                                     + (f" (got fields: {got})" if got else ""))
        if not all(isinstance(i, UploadFile) for i in items):
            raise HTTPException(422, f"field '{limits.FIELD}' must hold files, not text")
        return [(i.filename, await i.read()) for i in items]


async def decode_all(named_bytes: Sequence[tuple[str | None, bytes]], settings: Settings,
                     img_size: int, *, window: limits.Window | None = None) -> list[limits.Upload]:
    """(client's file name or None, encoded bytes) -> decoded uploads. The headers are checked
    at once (a refused request never waits for a decoder), then the images are decoded in a
    worker thread, one after another. Small bodies are checked and decoded on the event loop
    itself: a few-KB image decodes in ~0.1 ms, less than the two hops to the thread pool cost."""
    check = partial(limits.check_request, named_bytes, max_pixels=settings.max_pixels,
                    max_request_pixels=settings.max_request_pixels, reduce_to=img_size)
    small = sum(len(data) for _, data in named_bytes) <= INLINE_BYTES
    sizes = check() if small else await run_in_threadpool(check)  # headers only: cheap when small
    # Inline only when the pixels are few too: a small PNG may still hold 64 MP of one colour.
    if small and sum(w * h for w, h in sizes) <= INLINE_PIXELS:
        return _decode(named_bytes, sizes, settings, img_size, window)

    def decode() -> list[limits.Upload]:
        return _decode(named_bytes, sizes, settings, img_size, window)

    async with _decoder_turn():
        return await run_in_threadpool(decode)


def _decode(named_bytes: Sequence[tuple[str | None, bytes]], sizes: list, settings: Settings,
            img_size: int, window: limits.Window | None) -> list[limits.Upload]:
    return [limits.decode_upload(name, data, max_pixels=settings.max_pixels, reduce_to=img_size,
                                 index=n, stored_size=size, window=window)
            for n, ((name, data), size) in enumerate(zip(named_bytes, sizes, strict=True))]


@asynccontextmanager
async def _decoder_turn() -> AsyncIterator[None]:
    """One of the DECODERS turns of this event loop (one a process under uvicorn; tests run
    several servers, each on its own loop)."""
    loop = asyncio.get_running_loop()
    turns = _decoder_turns.get(loop)
    if turns is None:
        turns = _decoder_turns[loop] = asyncio.Semaphore(DECODERS)
    async with turns:
        yield
