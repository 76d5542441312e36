"""The service's web page in headless Chromium: sign in with the API key, pick an image, see the
top-k bars, the Grad-CAM overlay, the recent-predictions row and the monitor summary; no request
leaves loopback."""

from __future__ import annotations

import pytest
from tests.browser import BROKEN_IMAGES_JS, chromium_page
from tests.serve.live import png_bytes, running_server
from tests.tiny import train_bundle as train_tiny_bundle

from clarivis.serve.app import create_app

KEY = "page-key"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("page")
    bundle = train_tiny_bundle(root)
    app = create_app(bundle, db_url=f"sqlite:///{root / 'log.db'}", api_key=KEY, expose_recent=True)
    with running_server(app) as url:
        yield url


def sign_in(page, url: str) -> None:
    """The server has a key: the page first shows its login form."""
    page.goto(url + "/")
    page.fill("input[name=key]", KEY)
    page.click("button[type=submit]")
    page.wait_for_selector("#file-input", state="attached")


def test_page_predicts_and_explains_an_uploaded_image(server, tmp_path):
    image = tmp_path / "red square.png"
    image.write_bytes(png_bytes((220, 20, 20), size=(64, 48)))
    with chromium_page() as page:
        outside = []
        local = (server, "blob:" + server)  # blob: URLs are the page's own object URLs
        page.on("request", lambda r: None if r.url.startswith(local) else outside.append(r.url))
        sign_in(page, server)
        page.wait_for_function("document.querySelector('#model-info').textContent.includes('test_resnet')")
        page.set_input_files("#file-input", str(image))
        page.wait_for_selector(".result .bar")
        bars = page.locator(".result .bar").all_inner_texts()
        assert len(bars) == 2 and all("%" in b for b in bars)  # two classes, both shown
        # The bar's fill is drawn as wide as its probability: the top one is not empty.
        fill, track = page.evaluate("[document.querySelector('.result .bar .fill').offsetWidth, "
                                    "document.querySelector('.result .bar .track').offsetWidth]")
        top = float(bars[0].split()[-1].rstrip("%")) / 100
        assert track > 0 and abs(fill / track - top) < 0.05
        assert "red square.png" in page.locator(".result .name").inner_text()
        overlay_shown = ("(() => { const i = document.querySelector('.result img.overlay'); "
                         "return i && !i.hidden && i.complete && i.naturalWidth > 0; })()")
        page.wait_for_function(overlay_shown, timeout=30_000)
        assert page.evaluate("document.querySelector('.result img.overlay').naturalWidth") > 2 * 224
        page.wait_for_selector("#recent tbody tr")
        row = page.locator("#recent tbody tr").first.inner_text()
        assert "64×48" in row and "ms" in row
        page.wait_for_function("document.querySelector('#monitor').innerText.includes('predictions')")
        assert page.evaluate(BROKEN_IMAGES_JS) == 0
        assert page.locator("#error").is_hidden()
        assert outside == []  # no CDN, no external request


def test_page_shows_a_refused_upload_as_one_line(server, tmp_path):
    junk = tmp_path / "notes.png"
    junk.write_bytes(b"this is not an image" * 5)
    with chromium_page() as page:
        sign_in(page, server)
        page.set_input_files("#file-input", str(junk))
        page.wait_for_selector("#error:not([hidden])")
        text = page.locator("#error").inner_text()
        assert text.startswith("415") and "notes.png" in text and "Traceback" not in text
