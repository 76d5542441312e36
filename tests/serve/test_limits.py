"""Limits that hold (issue 14, part 1): a request's pixel budget checked on the headers before any
decode, images decoded reduced towards the model input (no full-size copies kept, no float64
frames), only the accepted formats opened, raw image bodies, requests with uploads taken a
bounded number at a time, a full queue answered 429, and idle or slow connections that cannot
keep /healthz from answering."""

from __future__ import annotations

import asyncio
import io
import re
import socket
import struct
import time
import tracemalloc
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from tests.serve.live import logged, png_bytes, running_server

from clarivis.data.io import load_image
from clarivis.serve import connections, limits
from clarivis.serve.app import create_app
from clarivis.serve.batching import MicroBatcher

HEADER_TIMEOUT_S = 1.0  # the live servers' header deadline here (10 s in service)


def header_only_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height RGB pixels, with a few bytes of pixel data: it
    decodes only as 'truncated', so a 413 for it proves that nothing was decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100))
            + chunk(b"IEND", b""))


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def gradient(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width)[None, :, None]
    y = np.linspace(0, 255, height)[:, None, None]
    rgb = np.concatenate([np.broadcast_to(x, (height, width, 1)), np.broadcast_to(y, (height, width, 1)),
                          np.broadcast_to((x + y) / 2, (height, width, 1))], axis=2)
    return Image.fromarray(rgb.round().astype(np.uint8))


def assert_clean_error(response: httpx.Response, status: int, fragment: str = "") -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"detail"} and "\n" not in body["detail"], body
    assert fragment.lower() in body["detail"].lower(), body["detail"]


# ----------------------------------------------------------------------------- the pixel budget


def test_request_budget_is_checked_on_the_headers_before_any_decode(monkeypatch):
    """64 images of 8000x8000 (the 12 GB request of the issue): 413 from the headers alone."""
    monkeypatch.setattr(limits, "load_image", lambda *a, **k: pytest.fail("an image was decoded"))
    request = [(f"{i}.png", header_only_png(8000, 8000)) for i in range(64)]
    start = time.perf_counter()
    with pytest.raises(limits.HTTPException) as refused:
        limits.decode_request(request, reduce_to=32)
    assert time.perf_counter() - start < 1.0
    assert refused.value.status_code == 413
    assert "4096.0 MP" in refused.value.detail and "256 MP limit of one request" in refused.value.detail
    # one image over the per-image limit is named, also before decoding
    with pytest.raises(limits.HTTPException) as refused:
        limits.decode_request([("ok.png", png_bytes()), ("huge.png", header_only_png(9000, 9000))])
    assert refused.value.status_code == 413 and refused.value.detail.startswith("huge.png: 9000x9000")


def test_jpegs_count_at_the_scale_they_decode_at():
    """A 2000x1600 JPEG for a 32 px model decodes at 1/8 (250x200 = 0.05 MP): three fit a 0.2 MP
    budget that one 500x500 PNG (0.25 MP) exceeds."""
    jpeg = encoded(gradient(2000, 1600), "JPEG")
    uploads = limits.decode_request([("a.jpg", jpeg)] * 3, max_request_pixels=200_000, reduce_to=32)
    assert [(u.width, u.height) for u in uploads] == [(2000, 1600)] * 3  # as stored, for the log
    assert uploads[0].image.size == (84, 67)  # decoded at 250x200, then reduced by 3: 2x the input
    with pytest.raises(limits.HTTPException) as refused:
        limits.decode_request([("a.png", encoded(gradient(500, 500), "PNG"))], max_request_pixels=200_000,
                              reduce_to=32)
    assert refused.value.status_code == 413 and "0.2 MP limit" in refused.value.detail


# ----------------------------------------------------------------------------- reduced decoding


def _sixteen_bit(width: int, height: int) -> Image.Image:
    """12-bit values in a 16-bit image (a scanner's or microscope's), a smooth ramp 0..4095."""
    x, y = np.meshgrid(np.linspace(0, 1, width), np.linspace(0, 1, height))
    return Image.fromarray(((x + y) / 2 * 4095).round().astype(np.uint16))


@pytest.mark.parametrize(("fmt", "mode", "options"), [
    ("PNG", "RGB", {}), ("WEBP", "RGB", {"lossless": True}), ("TIFF", "RGB", {}), ("BMP", "RGB", {}),
    ("GIF", "P", {}), ("PNG", "RGBA", {}), ("PNG", "I;16", {}), ("TIFF", "I;16", {}),
])
def test_every_format_decodes_reduced_towards_the_model_input(fmt, mode, options):
    """1000x800 for a 64 px model: reduced by 6 to 167x134 (short side 2x the input or more, less
    than 4x), with the pixels of the full decode shrunk the same way."""
    if mode == "I;16":
        image = _sixteen_bit(1000, 800)
    elif mode == "P":
        image = gradient(1000, 800).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    else:
        image = gradient(1000, 800).convert(mode)
    data = encoded(image, fmt, **options)
    reduced = load_image(data, reduce_to=64, reduce_all=True)
    full = load_image(data, reduce_to=64)  # the CLI's decode: full size (no JPEG here)
    assert full.size == (1000, 800) and reduced.size == (167, 134) and reduced.mode == "RGB"
    expected = np.asarray(full.resize(reduced.size, Image.Resampling.BOX), dtype=float)
    difference = np.abs(np.asarray(reduced, dtype=float) - expected)
    assert np.median(difference) <= 1.0, (fmt, mode, np.median(difference))


def test_exif_orientation_survives_reduction():
    image = gradient(1000, 800)
    exif = image.getexif()
    exif[274] = 6  # rotate 90 degrees clockwise to display
    for fmt in ("PNG", "TIFF", "WEBP"):
        reduced = load_image(encoded(image, fmt, exif=exif), reduce_to=64, reduce_all=True)
        assert reduced.size == (134, 167), fmt


def test_sixteen_bit_frames_get_no_float64_copy():
    """A 3000x2000 16-bit scan: 12 MB as stored, 48 MB as float64 (the old stretch made three
    such copies). Reduced decoding stretches the reduced pixels with the full frame's range, read
    strip by strip; the CLI's full decode stretches strip by strip."""
    data = encoded(_sixteen_bit(3000, 2000), "PNG")
    frame_float64 = 3000 * 2000 * 8
    peaks = {}
    for reduce_all in (True, False):
        tracemalloc.start()  # sees numpy's allocations (Pillow's own are the decoded frame)
        image = load_image(data, reduce_to=64, reduce_all=reduce_all)
        peaks[reduce_all] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert np.asarray(image).min() <= 1 and np.asarray(image).max() == 255
    assert peaks[True] < frame_float64 / 6, peaks  # less than the frame's own 16-bit copy
    assert peaks[False] < frame_float64, peaks  # less than one float64 copy


# ----------------------------------------------------------------------------- formats


def _eps_bytes() -> bytes:
    return (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\n"
            b"newpath 0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n")


@pytest.mark.parametrize("fmt", ["ICO", "PCX", "TGA", "EPS", "SGI"])
def test_formats_pillow_reads_but_clarivis_does_not_are_415(fmt):
    data = _eps_bytes() if fmt == "EPS" else encoded(gradient(48, 32), fmt)
    with Image.open(io.BytesIO(data)) as opened:  # every plugin: Pillow knows the format...
        assert opened.format == fmt
    with pytest.raises(limits.HTTPException) as refused:  # ...the service never opens it
        limits.decode_request([(f"x.{fmt.lower()}", data)])
    assert refused.value.status_code == 415
    assert "not an image file" in refused.value.detail and "JPEG, PNG, WebP" in refused.value.detail


# ----------------------------------------------------------------------------- the live service


@pytest.fixture(scope="module")
def server(tiny_bundle, tmp_path_factory):
    """(base URL, database URL, app) with the default limits, 1 s to send headers."""
    db = f"sqlite:///{tmp_path_factory.mktemp('limits') / 'log.db'}"
    app = create_app(tiny_bundle, db_url=db)
    with running_server(app, header_timeout_s=HEADER_TIMEOUT_S) as url:
        yield url, db, app


def test_budget_413_over_http_before_decoding(server):
    url, db, app = server
    before = logged(db, app)
    files = [("file", (f"{i}.png", header_only_png(8000, 8000))) for i in range(64)]
    start = time.perf_counter()
    r = httpx.post(f"{url}/v1/predict", files=files, timeout=30)
    assert time.perf_counter() - start < 1.0
    assert_clean_error(r, 413, "limit of one request")
    assert logged(db, app) == before


def test_raw_image_body(server):
    url, db, _ = server
    data = png_bytes((220, 20, 20))
    with httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/v1/predict", content=data, params={"top_k": 1},
                   headers={"content-type": "image/png", "x-filename": "caf%C3%A9/../red.png"})
        assert r.status_code == 200, r.text
        (p,) = r.json()["predictions"]
        assert p["filename"] == "red.png" and (p["width"], p["height"]) == (40, 30) and len(p["top_k"]) == 1
        r = c.post("/v1/predict", content=data, headers={"content-type": "application/octet-stream"})
        assert r.json()["predictions"][0]["filename"] == "upload"
        # the type only says "one image": the bytes decide the format
        assert c.post("/v1/predict", content=encoded(gradient(40, 30), "JPEG"),
                      headers={"content-type": "image/webp"}).status_code == 200
        assert_clean_error(c.post("/v1/predict", content=b"", headers={"content-type": "image/jpeg"}),
                           422, "upload: empty file")
        assert_clean_error(c.post("/v1/predict", content=encoded(gradient(48, 32), "ICO"),
                                  headers={"content-type": "image/x-icon"}), 415, "not an image file")
        assert_clean_error(c.post("/v1/predict", content=header_only_png(9000, 9000),
                                  headers={"content-type": "image/png"}), 413, "pixel")
        assert_clean_error(c.post("/v1/predict", content=b"hello", headers={"content-type": "text/plain"}),
                           415, "application/octet-stream")
        spec = c.get("/openapi.json").json()["paths"]["/v1/predict"]["post"]
    content = spec["requestBody"]["content"]
    assert {"multipart/form-data", "image/jpeg", "image/png", "image/webp",
            "application/octet-stream"} <= set(content)
    assert "429" in spec["responses"] and "Retry-After" in spec["responses"]["429"]["headers"]
    assert any(p["name"] == "X-Filename" for p in spec["parameters"])


def _trickle(sockets: list[socket.socket]) -> None:
    for s in sockets:
        s.sendall(b"a")  # one more byte of a header line that never ends


def test_idle_and_slow_connections_do_not_lock_out_healthz(server):
    """100 connections held open, 50 silent and 50 sending half a header line a byte at a time:
    /healthz answers within a second throughout; past the header deadline the silent ones are
    closed and the slow ones told 408."""
    url, _, _ = server
    port = int(url.rsplit(":", 1)[1])
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
    slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
    try:
        for s in slow:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        latencies = []
        for _ in range(4):
            _trickle(slow)
            start = time.perf_counter()
            r = httpx.get(f"{url}/healthz", timeout=5)
            latencies.append(time.perf_counter() - start)
            assert r.status_code == 200 and r.json() == {"status": "ok"}
            time.sleep(0.1)
        assert max(latencies) < 1.0, latencies
        time.sleep(HEADER_TIMEOUT_S + 0.5)
        for s in silent:
            s.settimeout(5)
            assert s.recv(100) == b""  # closed by the server, nothing said
        for s in slow:
            s.settimeout(5)
            assert s.recv(100).startswith(b"HTTP/1.1 408")
    finally:
        for s in silent + slow:
            s.close()
    assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200


def test_full_queue_is_429_with_retry_after_and_counted(tiny_bundle, tmp_path):
    """A model that takes 0.4 s a batch of 1 and room for 2 waiting images: one request in the
    model, then 5 at once: two wait, three are refused at once with Retry-After; /metrics shows
    the queue's depth while they wait and counts the refusals."""
    app = create_app(tiny_bundle, db_url=f"sqlite:///{tmp_path / 'q.db'}")
    service = app.state.service

    def slow_model(payloads):
        time.sleep(0.4)
        return service._run_batch(payloads)

    service.batcher = bounded_batcher(service, slow_model, max_queue=2)  # started by the lifespan

    async def main(url: str):
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            async def one(i):
                return await c.post("/v1/predict", files=[("file", (f"{i}.png", png_bytes()))])
            while (await c.get("/readyz")).status_code != 200:  # the warm-up went through the model
                await asyncio.sleep(0.05)
            first = asyncio.create_task(one(0))
            await asyncio.sleep(0.1)  # in the model now
            others = [asyncio.create_task(one(i)) for i in range(1, 6)]
            await asyncio.sleep(0.1)
            during = (await c.get("/metrics")).text
            responses = [await first, *await asyncio.gather(*others)]
            return responses, during, (await c.get("/metrics")).text

    with running_server(app) as url:
        responses, during, after = asyncio.run(main(url))
    assert sorted(r.status_code for r in responses) == [200, 200, 200, 429, 429, 429]
    for r in responses:
        if r.status_code == 429:
            assert_clean_error(r, 429, "2 images are waiting for the model (limit 2)")
            assert int(r.headers["retry-after"]) >= 1
    assert metric(during, "clarivis_queue_depth_images") == 2
    assert metric(after, "clarivis_queue_depth_images") == 0
    assert metric(after, "clarivis_queue_rejections_total") == 3
    assert 'endpoint="/v1/predict",method="POST",status="429"' in after


def bounded_batcher(service, run_batch, *, max_queue: int) -> MicroBatcher:
    """A batcher wired as the Service wires its own (the bound, the depth gauge, the refusal
    counter), around a slower model."""
    return MicroBatcher(run_batch, max_batch=1, max_queue=max_queue, on_batch=service.metrics.observe_batch,
                        on_depth=service.metrics.observe_depth, on_reject=service.metrics.observe_rejection)


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


# ----------------------------------------------------------------------------- connection guard


async def _ok(_request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def bare_app() -> Starlette:
    return Starlette(routes=[Route("/healthz", _ok)])


PROTOCOLS = [p for p in (connections.GuardedHttpToolsProtocol, connections.GuardedH11Protocol) if p]


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=lambda p: p.__name__)
def test_idle_connections_beyond_the_cap_close_the_longest_waiting(protocol):
    with running_server(bare_app(), protocol=protocol, max_idle=10) as url:
        port = int(url.rsplit(":", 1)[1])
        held = []
        for _ in range(20):
            held.append(socket.create_connection(("127.0.0.1", port)))
            time.sleep(0.02)  # in order: the first ones have waited longest
        try:
            assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
            time.sleep(0.2)
            closed = []
            for s in held:
                s.settimeout(0.3)
                try:
                    closed.append(s.recv(10) == b"")
                except TimeoutError:
                    closed.append(False)  # still open, waiting
            assert closed[:10] == [True] * 10 and not any(closed[11:]), closed
        finally:
            for s in held:
                s.close()


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=lambda p: p.__name__)
def test_guard_on_both_protocols(protocol):
    """Header deadline after a keep-alive pause, and a request head over 64 KB refused."""
    with running_server(bare_app(), protocol=protocol, header_timeout_s=HEADER_TIMEOUT_S) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            s.settimeout(5)
            assert s.recv(1000).startswith(b"HTTP/1.1 200")
            s.sendall(b"GET /healthz HTTP/1.1\r\nHo")  # the next request, never finished
            start = time.perf_counter()
            assert s.recv(1000).startswith(b"HTTP/1.1 408")
            assert HEADER_TIMEOUT_S - 0.2 < time.perf_counter() - start < HEADER_TIMEOUT_S + 2
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.settimeout(5)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 100_000)
            assert s.recv(1000).startswith(b"HTTP/1.1 400")


# ----------------------------------------------------------------------------- upload turns


def test_requests_with_uploads_take_turns():
    """One request with a body at a time (max_active=1): a second waits its 0.2 s, then 429;
    a request without a body is never held up."""
    release = asyncio.Event()

    async def upload(request: Request) -> JSONResponse:
        await request.body()
        await release.wait()
        return JSONResponse({"ok": True})

    app = limits.BodyLimit(Starlette(routes=[Route("/up", upload, methods=["POST"]), Route("/healthz", _ok)]),
                           max_bytes=1000, max_active=1, wait_s=0.2)

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            first = asyncio.create_task(c.post("/up", content=b"x" * 10))
            await asyncio.sleep(0.05)
            second = await c.post("/up", content=b"y" * 10)
            health = await c.get("/healthz")
            release.set()
            return await first, second, health

    first, second, health = asyncio.run(main())
    assert first.status_code == 200 and health.status_code == 200
    assert_clean_error(second, 429, "in progress")
    assert second.headers["retry-after"] == "1" and second.headers["connection"] == "close"
