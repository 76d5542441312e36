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
    _, onnx_out, _ = run_cli(["predict", bundle, images, "--backend", "onnx", "--format", "json"], capsys)
    _, torch_out, _ = run_cli(["predict", bundle, images, "--format", "json"], capsys)
    onnx_rows, torch_rows = json.loads(onnx_out), json.loads(torch_out)
    assert [r["label"] for r in onnx_rows] == [r["label"] for r in torch_rows] and len(onnx_rows) == 7
    pairs = zip(onnx_rows, torch_rows, strict=True)
    assert all(abs(a["confidence"] - b["confidence"]) < 1e-3 for a, b in pairs)
    code, _, err = run_cli(["predict", bundle, images, "--backend", "onnx", "--out", tmp_path / "p.csv"],
                           capsys)
    assert_one_line_error(code, err, "--backend torch")
