"""/v1/search on a service started with an index: uploaded images find their own copies first,
paths come back relative to the collection, results have thumbnails, filters apply, and a
server without an index (or a text query on an image index) answers one line."""

from __future__ import annotations

import io
import json

import httpx
import pytest
from PIL import Image
from tests.serve.live import running_server
from tests.tiny import BLUE, RED, multilabel_bundle, write_image

from clarivis.index import index_images
from clarivis.serve.app import create_app


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, the photo folder) of a service whose bundle also encodes the index."""
    root = tmp_path_factory.mktemp("search-serve")
    bundle = multilabel_bundle(root / "model")  # an untrained encoder: fixed weights, offline
    photos = root / "photos"
    rows = ["path,site"]
    for i in range(6):
        for name, colour in (("red", RED), ("blue", BLUE)):
            write_image(photos / name / f"{name}{i}.png", colour, size=(32, 32))
            rows.append(f"{name}/{name}{i}.png,{'a' if i % 2 else 'b'}")
    (photos / "manifest.csv").write_text("\n".join(rows) + "\n")
    index_images(photos / "manifest.csv", out=root / "index", model=bundle, device="cpu")
    app = create_app(bundle, db_url=f"sqlite:///{root / 'log.db'}", index=str(root / "index"))
    with running_server(app) as url:
        yield url, photos


def test_an_uploaded_image_finds_its_copy_first(served):
    url, photos = served
    data = (photos / "red" / "red3.png").read_bytes()
    r = httpx.post(f"{url}/v1/search", params={"k": 4}, files=[("file", ("q.png", data))], timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["index_size"] == 12
    (query,) = body["queries"]
    assert query["query"] == "q.png" and len(query["results"]) == 4
    top = query["results"][0]
    assert top["path"] == "red/red3.png" and top["score"] == pytest.approx(1.0, abs=1e-4)
    assert top["metadata"] == {"site": "a"}
    assert "/" + str(photos).strip("/") not in json.dumps(body)  # no server path in the answer
    thumb = httpx.get(f"{url}/v1/search/image/{top['id']}", timeout=30)
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).size == (32, 32)


def test_filters_and_one_line_errors(served):
    url, photos = served
    data = (photos / "blue" / "blue0.png").read_bytes()
    r = httpx.post(f"{url}/v1/search", params={"k": 20, "where": "site=b"}, files=[("file", ("q.png", data))])
    results = r.json()["queries"][0]["results"]
    assert len(results) == 6 and all(h["metadata"] == {"site": "b"} for h in results)
    bad = httpx.post(f"{url}/v1/search", params={"where": "colour=red"}, files=[("file", ("q.png", data))])
    assert bad.status_code == 400 and "no metadata column 'colour'" in bad.json()["detail"]
    text = httpx.get(f"{url}/v1/search", params={"text": "a red square"})
    assert text.status_code == 400 and "CLIP" in text.json()["detail"]
    assert httpx.get(f"{url}/v1/search/image/999").status_code == 404
    gone = next(h for h in results if h["path"] == "blue/blue4.png")
    file = photos / "blue" / "blue4.png"
    original = file.read_bytes()
    file.write_bytes(b"no longer a picture")
    try:
        thumb = httpx.get(f"{url}/v1/search/image/{gone['id']}")
    finally:
        file.write_bytes(original)  # the page test shows every thumbnail
    assert thumb.status_code == 404 and "run clarivis index again" in thumb.json()["detail"]


def test_a_server_without_an_index_says_how_to_get_one(tmp_path):
    bundle = multilabel_bundle(tmp_path / "model")
    app = create_app(bundle, db_url=f"sqlite:///{tmp_path / 'log.db'}")
    with running_server(app) as url:
        r = httpx.get(f"{url}/v1/search", params={"text": "anything"})
    assert r.status_code == 404 and "--index" in r.json()["detail"]


def test_the_page_searches_by_image(served):
    from tests.browser import BROKEN_IMAGES_JS, chromium_page

    url, photos = served
    with chromium_page() as page:
        page.goto(url + "/")
        page.wait_for_selector("#search-section:not([hidden])")
        assert "(12 images)" in page.locator("#search-size").inner_text()
        assert page.locator("#search-text").is_hidden()  # not a CLIP index: no words box
        page.set_input_files("#search-file", str(photos / "blue" / "blue2.png"))
        page.wait_for_selector("#search-results .hit")
        page.wait_for_function("Array.from(document.querySelectorAll('.hit img')).every(i => i.complete)")
        captions = page.locator(".hit figcaption").all_inner_texts()
        assert len(captions) == 12 and captions[0].endswith("blue/blue2.png")
        assert page.evaluate(BROKEN_IMAGES_JS) == 0 and page.locator("#error").is_hidden()
