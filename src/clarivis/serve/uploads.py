"""The images of a request, read and decoded: the `file` fields of a multipart form. Decoding runs
in a thread (a photo takes milliseconds to seconds); any bad file fails the whole request, before
the model runs, with the 4xx that limits.decode_upload gives."""

from __future__ import annotations

from clarivis.extras import needs
from clarivis.serve import limits
from clarivis.serve.settings import Settings

with needs("serve", "clarivis serve"):
    from fastapi import HTTPException, Request
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile


async def read_uploads(request: Request, settings: Settings, img_size: int) -> list[limits.Upload]:
    """Every image of the request, decoded and reduced towards `img_size` (the model's input)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise HTTPException(415, f"send images as multipart/form-data in field '{limits.FIELD}' "
                                 f"(got content type '{content_type[:60] or 'none'}')")
    async with request.form(max_files=settings.max_files, max_fields=settings.max_files) as form:
        items = form.getlist(limits.FIELD)
        if not items:
            got = ", ".join(k[:30] for k in sorted(set(form.keys()))[:5])
            raise HTTPException(422, f"no images: send each image in multipart field '{limits.FIELD}'"
                                     + (f" (got fields: {got})" if got else ""))
        if not all(isinstance(i, UploadFile) for i in items):
            raise HTTPException(422, f"field '{limits.FIELD}' must hold files, not text")
        raw = [(i.filename, await i.read()) for i in items]
    return await decode_all(raw, settings, img_size)


async def decode_all(named_bytes: list[tuple[str | None, bytes]], settings: Settings,
                     img_size: int) -> list[limits.Upload]:
    """(client's file name or None, encoded bytes) -> decoded uploads, in a worker thread. Every
    way a request carries images (multipart, raw body, v2 BYTES) ends here."""
    return await run_in_threadpool(
        lambda: [limits.decode_upload(name, data, max_pixels=settings.max_pixels, reduce_to=img_size, index=n)
                 for n, (name, data) in enumerate(named_bytes)])
