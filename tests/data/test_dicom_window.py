"""--window CENTER,WIDTH: one DICOM window stored in the bundle's preprocessing and used by every
reader of that bundle (training's decode and cache, Classifier, batch predict, the runtime)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("pydicom")
import torch  # noqa: E402
from tests.dicom_files import dicom_dataset, ramp, write_dicom  # noqa: E402
from tests.e2e.test_cli import assert_one_line_error, run_cli  # noqa: E402
from tests.tiny import CNN, tiny_classifier  # noqa: E402

from clarivis.classifier import Classifier  # noqa: E402
from clarivis.config import parse_window  # noqa: E402
from clarivis.data.cache import preprocess_key  # noqa: E402
from clarivis.data.io import load_image  # noqa: E402
from clarivis.data.scan import scan_images  # noqa: E402
from clarivis.data.sources import Sample  # noqa: E402
from clarivis.runtime.preprocess import RuntimePreprocess, decode  # noqa: E402
from clarivis.spec import BundleConfig, Preprocess  # noqa: E402

WINDOW = (1000.0, 500.0)  # stored values 750..1250 span the grey range: most of the ramp clips


@pytest.fixture
def scan(tmp_path):
    # the file's own window shows the whole ramp; WINDOW shows a narrow band of it
    return write_dicom(dicom_dataset(ramp(), WindowCenter=2048, WindowWidth=4096), tmp_path / "a.dcm")


def test_the_window_round_trips_through_config_json():
    config = BundleConfig.for_model(architecture=CNN, class_names=["a", "b"],
                                    preprocess=Preprocess(img_size=32, window=WINDOW))
    raw = json.loads(json.dumps(config.to_dict()))
    assert raw["window"] == [1000.0, 500.0]
    assert BundleConfig.from_dict(raw).preprocess.window == WINDOW
    # a bundle without a window (every bundle before DICOM windows) reads as before and writes no key
    old = {k: v for k, v in raw.items() if k != "window"}
    assert BundleConfig.from_dict(old).preprocess.window is None
    assert "window" not in BundleConfig.from_dict(old).to_dict()
    with pytest.raises(ValueError, match="width must be at least 1"):
        Preprocess(img_size=32, window=(0, 0.5))


def test_the_window_flag_parses_and_refuses_in_one_line(capsys):
    assert parse_window("-600, 1500") == (-600.0, 1500.0) and parse_window("") is None
    code, _, err = run_cli(["train", "DATA", "--window", "40"], capsys)
    assert_one_line_error(code, err, "--window expects CENTER,WIDTH (two numbers, e.g. 40,400), got '40'")
    code, _, err = run_cli(["train", "DATA", "--window", "40,0"], capsys)
    assert_one_line_error(code, err, "--window: a window's width must be at least 1 (got 0)")


def test_every_reader_decodes_with_the_bundles_window(scan):
    own, windowed = np.asarray(load_image(scan)), np.asarray(load_image(scan, window=WINDOW))
    assert (own != windowed).mean() > 0.5  # the two windows differ
    base = tiny_classifier(CNN)
    clf = Classifier(base.model, base.config.updated(window=list(WINDOW)), torch.device("cpu"))
    expected = clf.resize(torch.from_numpy(windowed.copy()).permute(2, 0, 1))
    _, pixels = clf.prepare((str(scan), None))
    assert torch.equal(pixels, expected)
    _, plain = base.prepare((str(scan), None))
    assert not torch.equal(plain, expected)
    # the runtime (torch-free) reads the same preprocessing from config.json
    pp = RuntimePreprocess.from_config(clf.config.to_dict())
    assert pp.window == WINDOW and np.array_equal(np.asarray(decode(scan, pp)), windowed)
    # training's decode check keeps windowed pixels; its tensor cache is keyed by the window
    result = scan_images([Sample(str(scan), "a")], window=WINDOW)
    assert np.array_equal(result.images[0].permute(1, 2, 0).numpy(), windowed)
    assert preprocess_key(Preprocess(32)) != preprocess_key(Preprocess(32, window=WINDOW))
