"""`clarivis export` and `predict --backend onnx` as a user runs them."""

from __future__ import annotations

import json

from tests.e2e.test_cli import assert_one_line_error, run_cli
from tests.tiny import train_bundle, write_images


def test_export_then_predict_with_onnx_matches_torch(tmp_path, capsys):
    bundle = train_bundle(tmp_path)
    images = write_images(tmp_path / "more", per_class=3)
    capsys.readouterr()
    code, _, err = run_cli(["predict", bundle, images, "--backend", "onnx"], capsys)
    assert_one_line_error(code, err, "clarivis export")  # nothing exported yet
    code, out, err = run_cli(["export", bundle, "--check-data", images], capsys)
    assert code == 0, err
    assert "fp32" in out and (bundle / "model.onnx").is_file()
    config = json.loads((bundle / "config.json").read_text())
    assert config["export"]["fp32"]["agreement"] >= 0.999
    (images / "notes.txt").write_text("not an image")  # reported by either backend, no row
    _, onnx_out, onnx_err = run_cli(["predict", bundle, images, "--backend", "onnx", "--format", "json"],
                                    capsys)
    assert "skipped 1 file that is not an image:" in onnx_err and "notes.txt" in onnx_err
    _, torch_out, _ = run_cli(["predict", bundle, images, "--format", "json"], capsys)
    onnx_rows, torch_rows = json.loads(onnx_out), json.loads(torch_out)
    assert [r["label"] for r in onnx_rows] == [r["label"] for r in torch_rows] and len(onnx_rows) == 7
    pairs = zip(onnx_rows, torch_rows, strict=True)
    assert all(abs(a["confidence"] - b["confidence"]) < 1e-3 for a, b in pairs)
    code, _, err = run_cli(["predict", bundle, images, "--backend", "onnx", "--out", tmp_path / "p.csv"],
                           capsys)
    assert_one_line_error(code, err, "--backend torch")


def test_int8_below_its_bar_exits_1_and_keeps_fp32(tmp_path, capsys, monkeypatch):
    from clarivis.export import pipeline

    bundle = train_bundle(tmp_path)
    images = write_images(tmp_path / "more", per_class=3)
    monkeypatch.setitem(pipeline.MIN_AGREEMENT, "int8", 1.01)  # unreachable: int8 must fail
    code, out, err = run_cli(["export", bundle, "--int8", "--check-data", images], capsys)
    lines = out.strip().splitlines()
    assert code == 1 and "Traceback" not in err
    assert "(ok)" in lines[1] and lines[1].startswith("fp32: model.onnx")
    assert lines[-1].startswith("INT8 CHECK FAILED: int8 was not kept as model.int8.onnx")
    assert sorted(p.name for p in bundle.glob("*.onnx")) == ["model.int8.failed-check.onnx", "model.onnx"]
    # The fp32 file serves; --int8 finds nothing to load and says so.
    code, _, _ = run_cli(["predict", bundle, images, "--backend", "onnx", "--format", "json"], capsys)
    assert code == 0
    code, _, err = run_cli(["predict", bundle, images, "--backend", "onnx", "--int8"], capsys)
    assert code == 2 and "model.int8.onnx" in err
