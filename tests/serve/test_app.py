"""The service over real HTTP: a uvicorn server on a loopback port, driven with httpx."""

from __future__ import annotations

import io
import struct
import zlib

import httpx
import pytest
from PIL import Image
from tests.serve.live import logged, png_bytes, running_server

from clarivis.serve.app import create_app
from clarivis.serve.predlog import PredictionLog

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def server(tiny_bundle, tmp_path_factory):
    """(base URL, database URL, app) of a server without an API key, 4 files a request at most."""
    db = f"sqlite:///{tmp_path_factory.mktemp('db') / 'log.db'}"
    app = create_app(tiny_bundle, db_url=db, max_files=4)
    with running_server(app) as url:
        yield url, db, app


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server[0], timeout=30) as c:
        yield c


def files(*items):
    return [("file", item) for item in items]


def assert_clean_error(response: httpx.Response, status: int, fragment: str = "") -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str), body
    assert "\n" not in body["detail"] and "Traceback" not in response.text and 'File "' not in response.text
    assert fragment.lower() in body["detail"].lower(), body["detail"]


def test_predict_one_image(client, server):
    before = logged(server[1], server[2])
    r = client.post("/v1/predict", files=files(("red.png", png_bytes((220, 20, 20)))))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["backend"] == "torch" and len(body["model_version"]) == 12 and body["latency_ms"] > 0
    (p,) = body["predictions"]
    assert p["filename"] == "red.png" and (p["width"], p["height"]) == (40, 30)
    assert p["label"] in ("red", "blue") and p["label"] == p["top_k"][0]["label"]
    assert abs(sum(t["probability"] for t in p["top_k"]) - 1) < 1e-5  # 2 classes: top-5 is all
    assert len(p["sha256"]) == 64 and "labels" not in p  # the label set is a multi-label model's
    assert logged(server[1], server[2]) == before + 1


def test_predict_many_images_and_top_k(client, server):
    before = logged(server[1], server[2])
    imgs = [(f"{i}.png", png_bytes((220, 20, 20) if i % 2 else (20, 20, 220), size=(30 + i, 30)))
            for i in range(4)]
    r = client.post("/v1/predict", params={"top_k": 1}, files=files(*imgs))
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["filename"] for p in preds] == [name for name, _ in imgs]
    assert all(len(p["top_k"]) == 1 for p in preds)
    assert [p["width"] for p in preds] == [30, 31, 32, 33]
    assert logged(server[1], server[2]) == before + 4
    # the same image alone gives the same answer as in a batch
    alone = client.post("/v1/predict", files=files(imgs[2])).json()["predictions"][0]
    assert alone["confidence"] == pytest.approx(preds[2]["confidence"], abs=1e-5)


def test_path_like_filename_is_only_shown_by_its_base_name(client):
    r = client.post("/v1/predict", files=files(("../../etc/passwd", png_bytes())))
    assert r.status_code == 200 and r.json()["predictions"][0]["filename"] == "passwd"
    r = client.post("/v1/predict", files=files(("..\\..\\C:\\evil.png", b"not an image at all")))
    assert_clean_error(r, 415, "evil.png: not an image")
    assert ".." not in r.json()["detail"]


def _bomb_png(side: int = 30_000) -> bytes:
    """A valid PNG header claiming side x side pixels (900 MP) with a few bytes of data: it
    would take 2.7 GB decoded; the server must refuse it from the header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + \
        chunk(b"IEND", b"")


def _jpeg(size=(64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 200, 10)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize(("name", "request_kwargs", "status", "fragment"), [
    ("no body", {}, 415, "multipart/form-data"),
    ("empty multipart", {"content": b"", "headers": {"content-type": "multipart/form-data; boundary=x"}},
     422, "no images"),
    ("empty file", {"files": files(("e.png", b""))}, 422, "empty file"),
    ("not an image", {"files": files(("a.png", b"hello, this is text" * 10))}, 415, "not an image"),
    ("truncated jpeg", {"files": files(("t.jpg", _jpeg()[:300]))}, 422, "t.jpg: truncated"),
    ("decompression bomb", {"files": files(("bomb.png", _bomb_png()))}, 413, "pixel"),
    ("50 MB file", {"files": files(("big.png", b"\0" * 50_000_000))}, 413, "upload limit"),
    ("wrong field name", {"files": [("image", ("a.png", png_bytes()))]}, 422, "field 'file'"),
    ("text in the file field", {"data": {"file": "hello"}}, 415, "multipart"),
    ("text in a multipart file field", {"data": {"file": "hello"}, "files": [("x", ("x.png", b"x"))]},
     422, "must hold files"),
    ("too many files", {"files": files(*[(f"{i}.png", png_bytes()) for i in range(5)])}, 400, "files"),
    ("bad top_k", {"params": {"top_k": "many"}, "files": files(("a.png", png_bytes()))}, 422, "top_k"),
    ("top_k zero", {"params": {"top_k": 0}, "files": files(("a.png", png_bytes()))}, 422, "top_k"),
])
def test_hostile_uploads_are_clean_4xx(client, server, name, request_kwargs, status, fragment):
    before = logged(server[1], server[2])
    assert_clean_error(client.post("/v1/predict", **request_kwargs), status, fragment)
    assert logged(server[1], server[2]) == before  # nothing logged for a refused request


def test_one_bad_file_refuses_the_whole_request(client, server):
    before = logged(server[1], server[2])
    r = client.post("/v1/predict", files=files(("ok.png", png_bytes()), ("bad.jpg", _jpeg()[:200])))
    assert_clean_error(r, 422, "bad.jpg")
    assert logged(server[1], server[2]) == before


def test_explain_returns_a_png_overlay(client):
    r = client.post("/v1/explain", files=files(("red.png", png_bytes((220, 20, 20), size=(64, 64)))))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(r.content))
    assert image.format == "PNG" and image.width > 2 * 224  # original | overlay, 224 px panels
    assert r.headers["x-label"] in ("red", "blue") and 0 < float(r.headers["x-confidence"]) <= 1
    r = client.post("/v1/explain", params={"target": "blue", "method": "gradcam++"},
                    files=files(("red.png", png_bytes())))
    assert r.status_code == 200
    one, two = files(("a.png", png_bytes())), files(("a.png", png_bytes()), ("b.png", png_bytes()))
    assert_clean_error(client.post("/v1/explain", params={"target": "cat"}, files=one), 422, "unknown target")
    assert_clean_error(client.post("/v1/explain", files=files(("a.png", b"junk"))), 415, "not an image")
    assert_clean_error(client.post("/v1/explain", files=two), 422, "one image")


def test_model_metadata(client, tiny_bundle):
    m = client.get("/v1/model").json()
    assert m["architecture"] == "test_resnet" and m["class_names"] == ["blue", "red"]
    assert m["input_size"] == [3, 32, 32] and m["backend"] == "torch" and not m["auth_required"]
    assert m["limits"]["max_files"] == 4 and m["batching"]["max_batch"] >= 1
    assert "data" not in m["training"]
    assert m["task"] == "multiclass" and m["thresholds"] is None and m["temperatures"] is None


def test_health_readiness_metrics_docs(client):
    client.post("/v1/predict", files=files(("a.png", png_bytes())))
    client.post("/v1/predict", files=files(("a.png", b"junk")))
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["model"] is True
    text = client.get("/metrics").text
    assert 'clarivis_http_requests_total{endpoint="/v1/predict",method="POST",status="200"}' in text
    assert 'clarivis_http_requests_total{endpoint="/v1/predict",method="POST",status="415"}' in text
    assert "clarivis_http_request_duration_seconds_bucket" in text
    assert "clarivis_batch_size_images_count" in text and "clarivis_predictions_total{label=" in text
    client.get("/no/such/page/12345")
    assert "/no/such/page" not in client.get("/metrics").text  # unknown paths count as "other"
    spec = client.get("/openapi.json").json()
    expected = {"/v1/predict", "/v1/explain", "/v1/model", "/v1/monitor", "/healthz", "/readyz", "/metrics"}
    assert expected <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_monitor_and_recent(client, server):
    client.post("/v1/predict", files=files(("a.png", png_bytes())))
    report = client.get("/v1/monitor").json()
    assert report["total_predictions"] == logged(server[1], server[2]) and report["latency_ms"]["p50"] > 0
    assert_clean_error(client.get("/v1/monitor", params={"since": "yesterday-ish"}), 422, "since")
    assert report["review_queue"] == [] and "--expose-recent" in " ".join(report["notes"])
    assert_clean_error(client.get("/v1/recent"), 404, "--expose-recent")  # every client's traffic


def test_recent_and_review_queue_only_when_exposed(tiny_bundle, tmp_path):
    app = create_app(tiny_bundle, db_url=f"sqlite:///{tmp_path / 'r.db'}", expose_recent=True)
    with running_server(app) as url, httpx.Client(base_url=url) as c:
        for _ in range(2):
            c.post("/v1/predict", files=files(("a.png", png_bytes())))
        recent = c.get("/v1/recent", params={"limit": 2}).json()["predictions"]
        assert len(recent) == 2 and set(recent[0]) >= {"time", "label", "confidence", "latency_ms", "sha256"}
        assert "filename" not in recent[0]
        assert len(c.get("/v1/monitor").json()["review_queue"]) == 2


def test_web_page_and_assets_are_local(client):
    page = client.get("/")
    assert page.status_code == 200 and "static/app.js" in page.text
    for asset in ("/static/app.js", "/static/app.css"):
        assert client.get(asset).status_code == 200
    assert "http://" not in page.text and "https://" not in page.text  # no CDN


def test_api_key(tiny_bundle, tmp_path):
    app = create_app(tiny_bundle, api_key=KEY, db_url=f"sqlite:///{tmp_path / 'k.db'}")
    with running_server(app) as url, httpx.Client(base_url=url) as c:
        img = files(("a.png", png_bytes()))
        assert_clean_error(c.post("/v1/predict", files=img), 401, "API key")
        assert_clean_error(c.post("/v1/predict", files=img, headers={"X-API-Key": "wrong"}), 401, "API key")
        assert_clean_error(c.get("/v1/model"), 401, "API key")
        assert c.post("/v1/predict", files=img, headers={"X-API-Key": KEY}).status_code == 200
        assert c.get("/v1/model", headers={"Authorization": f"Bearer {KEY}"}).json()["auth_required"]
        assert logged(f"sqlite:///{tmp_path / 'k.db'}", app) == 1
        # open: liveness only; everything else, the page, docs and metrics included, needs the key
        assert c.get("/healthz").status_code == 200 and c.get("/v2/health/live").status_code != 401
        for path in ("/", "/docs", "/openapi.json", "/metrics", "/readyz", "/static/app.js", "/v1/monitor"):
            assert_clean_error(c.get(path), 401, "API key")
            assert c.get(path, headers={"X-API-Key": KEY}).status_code == 200, path
        scheme = c.get("/openapi.json", headers={"X-API-Key": KEY}).json()["components"]["securitySchemes"]
        assert scheme["ApiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}


def test_browser_signs_in_with_a_cookie(tiny_bundle, tmp_path):
    app = create_app(tiny_bundle, api_key=KEY, db_url=f"sqlite:///{tmp_path / 'k.db'}")
    with running_server(app) as url, httpx.Client(base_url=url) as c:
        page = c.get("/", headers={"Accept": "text/html"})
        assert page.status_code == 401 and 'action="/login"' in page.text
        assert c.post("/login", data={"key": "wrong"}).status_code == 401
        signed = c.post("/login", data={"key": KEY})
        assert signed.status_code == 303 and "HttpOnly" in signed.headers["set-cookie"]
        assert "SameSite=Strict" in signed.headers["set-cookie"]
        assert c.get("/v1/model").status_code == 200  # the cookie, no header


@pytest.mark.parametrize(("bind", "allowed", "host", "status"), [
    ("127.0.0.1", (), "localhost:8000", 200),
    ("127.0.0.1", (), "evil.example", 400),  # DNS rebinding from a web page
    ("127.0.0.1", ("clarivis.lan",), "clarivis.lan", 200),
    ("127.0.0.1", ("clarivis.lan",), "127.0.0.1", 400),
    ("0.0.0.0", (), "anything.example", 200),
    ("0.0.0.0", ("*",), "anything.example", 200),
])
def test_host_header_is_checked(tiny_bundle, tmp_path, bind, allowed, host, status):
    app = create_app(tiny_bundle, db_url=f"sqlite:///{tmp_path / 'h.db'}", host=bind, allowed_hosts=allowed)
    with running_server(app) as url, httpx.Client(base_url=url) as c:
        r = c.get("/v1/model", headers={"Host": host})
        assert r.status_code == status, r.text
        assert c.get("/healthz", headers={"Host": "evil.example"}).status_code == 200  # probes: any


def test_public_metrics_opens_metrics_only(tiny_bundle, tmp_path):
    app = create_app(tiny_bundle, api_key=KEY, public_metrics=True, db_url=f"sqlite:///{tmp_path / 'm.db'}")
    with running_server(app) as url, httpx.Client(base_url=url) as c:
        assert c.get("/metrics").status_code == 200
        assert c.get("/v1/model").status_code == 401


def test_no_server_paths_in_answers(tiny_bundle, tmp_path):
    db_file = tmp_path / "p.db"
    app = create_app(tiny_bundle, db_url=f"sqlite:///{db_file}", expose_recent=True)
    with running_server(app) as url, httpx.Client(base_url=url) as c:
        c.post("/v1/predict", files=files(("a.png", png_bytes())))
        answers = [c.get(p).text for p in ("/v1/model", "/v1/monitor", "/readyz", "/openapi.json")]
    for text in answers:
        assert str(tmp_path) not in text and str(tiny_bundle) not in text  # a file name at most


def test_request_timeout_is_504_and_not_logged(tiny_bundle, tmp_path):
    db = f"sqlite:///{tmp_path / 't.db'}"
    app = create_app(tiny_bundle, db_url=db, timeout_s=1e-4)
    with running_server(app) as url, httpx.Client(base_url=url) as c:
        assert_clean_error(c.post("/v1/predict", files=files(("a.png", png_bytes()))), 504, "limit")
    assert logged(db) == 0


def test_store_images_keeps_the_bytes_only_when_asked(tiny_bundle, tmp_path):
    data = png_bytes((20, 20, 220))
    for store in (False, True):
        db = f"sqlite:///{tmp_path / f'{store}.db'}"
        with running_server(create_app(tiny_bundle, db_url=db, store_images=store)) as url:
            assert httpx.post(f"{url}/v1/predict", files=files(("b.png", data))).status_code == 200
        with PredictionLog(db) as log:
            (row,) = log.query()
        assert row.image == (data if store else None) and row.num_bytes == len(data)


def test_bad_settings_fail_before_serving(tiny_bundle, tmp_path):
    from clarivis.errors import ClarivisError

    with pytest.raises(ClarivisError, match="backend"):
        create_app(tiny_bundle, backend="tensorrt")
    with pytest.raises(ClarivisError, match="max-batch"):
        create_app(tiny_bundle, max_batch=0)
    with pytest.raises(ClarivisError, match="ModelBundle|does not exist"):
        create_app(tmp_path / "nothing")
    with pytest.raises(ClarivisError, match="export|runtime"):
        create_app(tiny_bundle, backend="onnx")  # no model.onnx in this bundle


def test_chunked_body_over_the_limit_is_413(tiny_bundle, tmp_path):
    """No Content-Length: the body is counted as it streams in."""
    app = create_app(tiny_bundle, db_url=f"sqlite:///{tmp_path / 'c.db'}", max_upload_mb=1)
    boundary = b"b0undary"

    def body():
        yield b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'
        for _ in range(40):
            yield b"\0" * 100_000  # 4 MB in all
        yield b"\r\n--" + boundary + b"--\r\n"

    with running_server(app) as url:
        r = httpx.post(f"{url}/v1/predict", content=body(),
                       headers={"content-type": f"multipart/form-data; boundary={boundary.decode()}"})
    assert_clean_error(r, 413, "1 MB upload limit")
