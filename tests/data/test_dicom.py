"""DICOM decoding (the 'medical' extra): modality LUT, window, MONOCHROME1, refusals, detection.

Reference values come from pydicom's own pipeline: apply_modality_lut, then apply_voi_lut, whose
output range [y_min, y_max] (pydicom's apply_windowing: 0..2**BitsStored-1 unsigned, signed
around 0, both through the rescale) is mapped linearly onto 0..255 and rounded; clarivis windows
straight onto 0..255, so the two agree to one grey level (rounding)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.pixels import apply_modality_lut, apply_voi_lut  # noqa: E402
from pydicom.uid import JPEGBaseline8Bit  # noqa: E402
from tests.dicom_files import PATIENT_ID, dicom_dataset, ramp, write_dicom  # noqa: E402
from tests.e2e.test_cli import run_cli  # noqa: E402

from clarivis.data.expand import walk_images  # noqa: E402
from clarivis.data.io import READ_FORMATS, decoded_size, is_dicom, is_image_path, load_image  # noqa: E402
from clarivis.errors import ImageDecodeError  # noqa: E402

_dataset, _write, _ramp = dicom_dataset, write_dicom, ramp


def _reference(path: Path) -> np.ndarray:
    """pydicom's own modality LUT + VOI LUT, its output range mapped onto 0..255 (module docstring)."""
    ds = pydicom.dcmread(path)
    values = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds, index=0)
    if ds.PixelRepresentation == 0:
        y_min, y_max = 0.0, float(2**ds.BitsStored - 1)
    else:
        y_min, y_max = float(-(2 ** (ds.BitsStored - 1))), float(2 ** (ds.BitsStored - 1) - 1)
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        y_min = y_min * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        y_max = y_max * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    gray = np.clip(np.rint((values - y_min) * 255.0 / (y_max - y_min)), 0, 255)
    return 255 - gray if ds.PhotometricInterpretation == "MONOCHROME1" else gray


def _gray(image) -> np.ndarray:
    pixels = np.asarray(image)
    assert image.mode == "RGB" and pixels.shape[2] == 3
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 0] == pixels[..., 2]).all()
    return pixels[..., 0].astype(np.int64)


def test_16bit_with_rescale_and_window_matches_pydicom(tmp_path):
    # CT-like: stored 0..4095, HU = stored - 1024, a soft-tissue window 40/400 HU.
    path = _write(_dataset(_ramp(), RescaleSlope=1, RescaleIntercept=-1024,
                           WindowCenter=40, WindowWidth=400), tmp_path / "ct.dcm")
    gray = _gray(load_image(path))
    expected = _reference(path)
    assert np.abs(gray - expected).max() <= 1
    # the window clips: HU <= -160 black, > 240 white, and the ramp passes through between
    hu = _ramp().astype(np.int64) - 1024
    assert (gray[hu <= -160] == 0).all() and (gray[hu > 240] == 255).all()
    assert 0 < gray[(hu > -100) & (hu < 200)].min() < gray[(hu > -100) & (hu < 200)].max() < 255


def test_first_of_several_windows_and_an_explicit_window(tmp_path):
    path = _write(_dataset(_ramp(), RescaleSlope=2, RescaleIntercept=-1000,
                           WindowCenter=[500, 3000], WindowWidth=[1000, 200]), tmp_path / "two.dcm")
    assert np.abs(_gray(load_image(path)) - _reference(path)).max() <= 1  # index 0: 500/1000
    # an explicit (center, width) in modality units replaces the file's: 2*stored-1000 spans
    # -1000..7190, so a window of that whole span maps it onto 0..255
    explicit = _gray(load_image(path, window=(3095.0, 8191.0)))
    expected = np.rint(((2.0 * _ramp() - 1000 - 3094.5) / 8190 + 0.5) * 255)
    assert np.abs(explicit - expected).max() <= 1
    assert explicit.min() == 0 and explicit.max() == 255


def test_monochrome1_is_inverted(tmp_path):
    tags = {"WindowCenter": 2048, "WindowWidth": 4096}
    mono2 = _gray(load_image(_write(_dataset(_ramp(), **tags), tmp_path / "m2.dcm")))
    path = _write(_dataset(_ramp(), PhotometricInterpretation="MONOCHROME1", **tags), tmp_path / "m1.dcm")
    mono1 = _gray(load_image(path))
    np.testing.assert_array_equal(mono1, 255 - mono2)
    assert np.abs(mono1 - _reference(path)).max() <= 1
    assert mono1[0, 0] == 255 and mono1[-1, -1] == 0  # the lowest value shows white


def test_a_voi_lut_sequence_is_applied(tmp_path):
    from pydicom.dataset import Dataset

    lut = Dataset()
    lut.add_new(0x00283002, "US", [4, 0, 8])  # LUTDescriptor: 4 entries from stored value 0, 8-bit out
    lut.add_new(0x00283006, "US", [0, 50, 100, 255])  # LUTData (US: its VR is ambiguous otherwise)
    pixels = np.array([[0, 1], [2, 3]], dtype=np.uint16)
    path = _write(_dataset(pixels, VOILUTSequence=[lut]), tmp_path / "lut.dcm")
    ds = pydicom.dcmread(path)
    np.testing.assert_array_equal(apply_voi_lut(ds.pixel_array, ds), [[0, 50], [100, 255]])
    np.testing.assert_array_equal(_gray(load_image(path)), [[0, 50], [100, 255]])  # 8-bit: as is


def test_without_a_window_the_values_range_is_stretched(tmp_path):
    pixels = (_ramp() // 4 + 100).astype(np.uint16)  # 100..1123
    gray = _gray(load_image(_write(_dataset(pixels), tmp_path / "plain.dcm")))
    expected = np.rint((pixels - 100.0) * 255.0 / 1023.0)
    assert np.abs(gray - expected).max() <= 1 and gray.min() == 0 and gray.max() == 255


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_pydicom_sample_files(name):
    path = Path(get_testdata_file(name))  # ship inside the pydicom wheel: no download
    ds = pydicom.dcmread(path)
    gray = _gray(load_image(path))
    assert gray.shape == (ds.Rows, ds.Columns)
    if "WindowCenter" in ds:  # MR_small: 600/1600 -> pydicom's pipeline
        assert np.abs(gray - _reference(path)).max() <= 1
    else:  # CT_small: rescale only (slope 1, intercept -1024): the HU range stretched
        hu = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
        expected = np.rint((hu - hu.min()) * 255.0 / (hu.max() - hu.min()))
        assert np.abs(gray - expected).max() <= 1
    assert gray.std() > 20  # a real picture, not a blank frame
    assert decoded_size(path) == ((ds.Columns, ds.Rows), (ds.Columns, ds.Rows))


def test_compressed_transfer_syntaxes(tmp_path):
    pytest.importorskip("pylibjpeg")
    pytest.importorskip("libjpeg")
    # JPEG-LS lossless (pydicom's sample; only pylibjpeg-libjpeg decodes it) equals the raw MR_small
    lossless = _gray(load_image(get_testdata_file("MR_small_jpeg_ls_lossless.dcm")))
    np.testing.assert_array_equal(lossless, _gray(load_image(get_testdata_file("MR_small.dcm"))))
    # a JPEG baseline file this test writes: 8-bit grey, window over the whole range
    from PIL import Image

    pixels = np.linspace(0, 255, 32 * 32).round().astype(np.uint8).reshape(32, 32)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    ds = _dataset(pixels, BitsStored=8, HighBit=7)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = pydicom.encaps.encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    gray = _gray(load_image(_write(ds, tmp_path / "jpeg.dcm")))
    assert np.abs(gray - pixels.astype(np.int64)).max() <= 4  # JPEG's own loss at quality 95


def test_colour_dicom_stays_colour():
    image = load_image(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))  # YBR JPEG, pydicom makes RGB
    pixels = np.asarray(image).astype(np.int64)
    assert image.mode == "RGB" and pixels.shape == (100, 100, 3)
    assert np.abs(pixels[..., 0] - pixels[..., 2]).max() > 100  # red and blue bands differ


def test_extensionless_dicom_is_recognised_by_its_magic(tmp_path):
    path = _write(_dataset(_ramp(), WindowCenter=2048, WindowWidth=4096), tmp_path / "series" / "IM0001")
    assert not is_image_path(path) and is_dicom(path) and is_dicom(path.read_bytes())
    assert not is_dicom(b"\0" * 200) and not is_dicom(tmp_path / "missing")
    assert np.abs(_gray(load_image(path)) - _reference(path)).max() <= 1
    # bytes and file objects too (the service's uploads); a file object is put back where it was
    np.testing.assert_array_equal(np.asarray(load_image(path.read_bytes())), np.asarray(load_image(path)))
    handle = io.BytesIO(path.read_bytes())
    assert is_dicom(handle) and handle.tell() == 0
    assert load_image(handle).size == (32, 24)
    (tmp_path / "series" / "notes.txt").write_text("not an image")
    assert [p for p, error in walk_images(str(tmp_path / "series"), lambda *_: None)] == [str(path)]


def test_reduce_all_shrinks_dicom_like_other_formats(tmp_path):
    pixels = np.tile(_ramp(24, 32), (8, 8))  # 192 x 256
    path = _write(_dataset(pixels, WindowCenter=2048, WindowWidth=4096), tmp_path / "big.dcm")
    # factor 192 // (2 * 32) = 3, the short side kept at 2x reduce_to: ceil(256 / 3) x 64
    assert load_image(path, reduce_to=32, reduce_all=True).size == (86, 64)


def test_multiframe_is_refused_in_one_line(tmp_path):
    frames = np.stack([_ramp(), _ramp()])
    ds = _dataset(_ramp(), NumberOfFrames=2)
    ds.PixelData = frames.tobytes()
    path = _write(ds, tmp_path / "volume.dcm")
    with pytest.raises(ImageDecodeError) as err:
        load_image(path)
    message = str(err.value)
    assert "\n" not in message and "volume.dcm" in message and "2 frames" in message
    assert "not supported yet" in message and "export single frames" in message


def test_errors_never_name_the_patient(tmp_path, caplog):
    ds = _dataset(_ramp(), WindowCenter=2048, WindowWidth=4096)
    ds.PixelData = ds.PixelData[:100]  # truncated pixel data
    path = _write(ds, tmp_path / "broken.dcm")
    with caplog.at_level("DEBUG"), pytest.raises(ImageDecodeError) as err:
        load_image(path)
    text = str(err.value) + caplog.text
    assert "\n" not in str(err.value) and "broken.dcm" in text
    assert "Doe" not in text and "Jane" not in text and PATIENT_ID not in text
    # nor a window the file cannot be shown with
    good = _write(_dataset(_ramp()), tmp_path / "good.dcm")
    with pytest.raises(ImageDecodeError, match="window width must be at least 1"):
        load_image(good, window=(0.0, 0.5))


def test_without_pydicom_one_line_names_the_extra(tmp_path, monkeypatch):
    path = _write(_dataset(_ramp()), tmp_path / "a.dcm")
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom -> ModuleNotFoundError
    from clarivis.extras import MissingExtraError

    with pytest.raises(MissingExtraError) as err:
        load_image(path)
    expected = f"{path}: reading DICOM needs the 'medical' extra: " + 'pip install "clarivis[medical]"'
    assert str(err.value) == expected
    with pytest.raises(MissingExtraError):  # the header read too (the service checks sizes first)
        decoded_size(path.read_bytes())


def test_missing_and_empty_dicom_files_fail_as_other_formats(tmp_path):
    with pytest.raises(ImageDecodeError, match=r"gone\.dcm: file not found$"):
        load_image(tmp_path / "gone.dcm")
    (tmp_path / "empty.dcm").write_bytes(b"")
    with pytest.raises(ImageDecodeError, match=r"empty file \(0 bytes\)"):
        load_image(tmp_path / "empty.dcm")
    (tmp_path / "text.dcm").write_text("not dicom at all")
    with pytest.raises(ImageDecodeError, match=r"text\.dcm: unreadable DICOM"):
        decoded_size(tmp_path / "text.dcm")


def test_dicom_is_a_read_format():
    assert is_image_path("scan.DCM") and is_image_path("x.dicom") and "DICOM" in READ_FORMATS


def test_predict_gives_a_row_for_a_dicom_file(tiny_bundle, tmp_path, capsys):
    folder = tmp_path / "in"
    _write(_dataset(_ramp(), WindowCenter=2048, WindowWidth=4096), folder / "scan.dcm")
    _write(_dataset(_ramp()), folder / "IM0002")
    code, out, _ = run_cli(["predict", tiny_bundle, folder, "--format", "json"], capsys)
    rows = json.loads(out)
    assert code == 0 and [Path(r["source"]).name for r in rows] == ["IM0002", "scan.dcm"]
    assert all(r["label"] in ("red", "blue") and not r.get("error") for r in rows)


def test_training_folders_take_extensionless_dicom_reading_132_bytes(tmp_path, monkeypatch):
    from clarivis.data import io as data_io
    from clarivis.data.sources import index_class_folders

    _write(_dataset(_ramp()), tmp_path / "a" / "IM0001")
    _write(_dataset(_ramp()), tmp_path / "a" / "1.2.840.113619.2.55")  # a UID-named export
    _write(_dataset(_ramp()), tmp_path / "b" / "scan.dcm")
    (tmp_path / "b" / "README").write_text("not an image")
    (tmp_path / "b" / "notes.txt").write_text("x" * 200)
    opened = []
    real_open = open

    def counting_open(path, *args, **kwargs):
        opened.append(Path(path).name)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(data_io, "open", counting_open, raising=False)
    samples = index_class_folders(tmp_path)
    assert [(Path(s.path).name, s.label) for s in samples] == [
        ("1.2.840.113619.2.55", "a"), ("IM0001", "a"), ("scan.dcm", "b")]
    # only files without an image extension and a bare or numeric one are opened, never .txt
    assert sorted(opened) == ["1.2.840.113619.2.55", "IM0001", "README"]


def test_header_mode_of_dicom_reads_no_pixels(tmp_path):
    from clarivis.data.io import image_mode

    path = _write(_dataset(_ramp()), tmp_path / "IM0001")
    assert image_mode(path.read_bytes()) == ("L", "DICOM", False)
    assert image_mode(Path(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))) == ("RGB", "DICOM", False)
    header_only = _dataset(_ramp(), Rows=4000, Columns=4000)  # pixel data far too short
    assert image_mode(_write(header_only, tmp_path / "big.dcm"))[0] == "L"
