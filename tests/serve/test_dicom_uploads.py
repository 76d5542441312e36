"""DICOM uploads (issue 15): recognised by their bytes (the DICM magic), the pixel budget read from
the header (Rows x Columns) before any decode, decoded through data/dicom.py with the model's window,
refusals as one-line 4xx answers that never name the patient."""

from __future__ import annotations

import io
import json
import shutil
import sys

import httpx
import numpy as np
import pytest

pytest.importorskip("pydicom")
from fastapi import HTTPException  # noqa: E402
from tests.dicom_files import PATIENT, PATIENT_ID, dicom_dataset, ramp  # noqa: E402
from tests.serve.live import running_server  # noqa: E402

from clarivis.classifier import Classifier  # noqa: E402
from clarivis.data.io import load_image  # noqa: E402
from clarivis.serve import limits  # noqa: E402
from clarivis.serve.app import create_app  # noqa: E402


def dicom_bytes(pixels: np.ndarray | None = None, **tags) -> bytes:
    ds = dicom_dataset(ramp() if pixels is None else pixels, **tags)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def refusal(named, **kwargs) -> HTTPException:
    with pytest.raises(HTTPException) as err:
        limits.decode_request(named, **kwargs)
    detail = err.value.detail
    assert "\n" not in detail and "Doe" not in detail and PATIENT_ID not in detail
    return err.value


def test_dicom_bytes_decode_with_the_models_window():
    data = dicom_bytes(WindowCenter=2048, WindowWidth=4096)
    (own,) = limits.decode_request([("IM0001", data)], reduce_to=32)
    (windowed,) = limits.decode_request([("IM0001", data)], reduce_to=32, window=(1000, 500))
    assert (own.width, own.height) == (32, 24) and own.image.size == (32, 24)
    assert np.array_equal(np.asarray(windowed.image), np.asarray(load_image(data, window=(1000, 500))))
    assert not np.array_equal(np.asarray(own.image), np.asarray(windowed.image))


def test_the_pixel_budget_comes_from_the_header_before_any_decode(monkeypatch):
    # Rows x Columns claim 4000 x 4000 over 1000 bytes of pixels: only the header can be read
    header_only = dicom_bytes(ramp(), Rows=4000, Columns=4000)
    monkeypatch.setattr(limits, "load_image", lambda *a, **k: pytest.fail("decoded"))
    err = refusal([("big", header_only)], max_pixels=20_000_000, max_request_pixels=8_000_000)
    assert err.status_code == 413 and "16.0 MP" in err.detail
    err = refusal([("big", header_only)], max_pixels=1_000_000)
    assert err.status_code == 413 and "big: 4000x4000 pixels exceeds the 1,000,000-pixel limit" in err.detail


def test_dicom_refusals_are_4xx_that_never_name_the_patient(monkeypatch):
    volume = dicom_dataset(ramp(), NumberOfFrames=2)
    volume.PixelData = np.stack([ramp(), ramp()]).tobytes()
    buffer = io.BytesIO()
    volume.save_as(buffer, enforce_file_format=True)
    err = refusal([("vol.dcm", buffer.getvalue())])
    assert err.status_code == 415 and "2 frames" in err.detail
    truncated = dicom_bytes()
    err = refusal([("cut.dcm", truncated[:-300])])
    assert err.status_code == 422 and "cut.dcm: unreadable DICOM" in err.detail
    monkeypatch.setitem(sys.modules, "pydicom", None)  # a server without the 'medical' extra
    err = refusal([("scan", truncated)])
    assert err.status_code == 415 and "cannot read DICOM" in err.detail and "'medical' extra" in err.detail


def test_a_dicom_body_is_predicted_over_http_with_the_bundles_window(tiny_bundle, tmp_path):
    bundle = shutil.copytree(tiny_bundle, tmp_path / "model")
    config = json.loads((bundle / "config.json").read_text())
    (bundle / "config.json").write_text(json.dumps({**config, "window": [1000, 500]}))
    app = create_app(bundle, db_url=f"sqlite:///{tmp_path / 'log.db'}")
    data = dicom_bytes(WindowCenter=2048, WindowWidth=4096)
    with running_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        raw = client.post("/v1/predict", content=data, headers={"Content-Type": "application/dicom",
                                                               "X-Filename": "IM0001"})
        form = client.post("/v1/predict", files=[("file", ("scan.dcm", data))])
        refused = client.post("/v1/predict", content=data[:-300],
                              headers={"Content-Type": "application/dicom"})
        info = client.get("/v1/model").json()
    assert info["window"] == [1000, 500]  # a client sees which window its scans are read with
    (tmp_path / "IM0001").write_bytes(data)
    windowed, = Classifier.load(bundle).predict(tmp_path / "IM0001")  # decodes with the window
    own, = Classifier.load(tiny_bundle).predict(tmp_path / "IM0001")
    assert abs(windowed.confidence - own.confidence) > 1e-4  # the window changes the answer
    for response in (raw, form):
        assert response.status_code == 200, response.text
        (p,) = response.json()["predictions"]
        assert (p["width"], p["height"]) == (32, 24) and p["label"] == windowed.label
        assert p["confidence"] == pytest.approx(windowed.confidence, abs=1e-5)
    assert raw.json()["predictions"][0]["filename"] == "IM0001"
    assert refused.status_code == 422 and PATIENT not in refused.text and PATIENT_ID not in refused.text
