"""clarivis export: ONNX fp32/int8 files, their agreement with PyTorch and the bundle record."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from tests.tiny import held_out

from clarivis.errors import DataError
from clarivis.export import pipeline
from clarivis.export.onnx import INPUT_NAME, OPSET, OUTPUT_NAME
from clarivis.export.quantize import end_layers
from clarivis.models.bundle import load_bundle


def test_cnn_fp32_and_int8_agree_with_torch(cnn_export):
    bundle, result = cnn_export
    assert result.passed, result.lines()
    assert result.fp32.agreement >= 0.999 and result.fp32.images == 60
    assert result.fp32.max_abs_logit_diff < 1e-3
    assert result.int8.agreement >= 0.98
    assert result.int8.size_mb < result.fp32.size_mb  # int8 weights: about 4x smaller
    assert result.calibration_source == "run val split" and result.calibration_images > 0
    for name in ("model.onnx", "model.int8.onnx"):
        onnx.checker.check_model(str(bundle / name))
    print("\n" + "\n".join(result.lines()))


def test_vit_fp32_agrees_with_torch(vit_export):
    bundle, result = vit_export
    assert result.fp32.agreement >= 0.999, result.lines()
    assert result.int8 is None and not (bundle / "model.int8.onnx").exists()
    print("\n" + "\n".join(result.lines()))


def test_results_are_written_into_the_bundle(cnn_export):
    bundle, result = cnn_export
    recorded = json.loads((bundle / "config.json").read_text())["export"]
    assert recorded["opset"] == OPSET and recorded["passed"] is True
    assert recorded["fp32"]["file"] == "model.onnx" and recorded["fp32"]["images_per_s"] > 0
    assert recorded["int8"]["agreement"] == result.int8.agreement
    assert recorded["torch"]["ms_per_image"] > 0 and len(recorded["weights_sha256"]) == 16


@pytest.mark.parametrize("which", ["cnn_export", "vit_export"])
@pytest.mark.parametrize("batch", [1, 7])
def test_dynamic_batch_axis(request, which, batch):
    bundle, _ = request.getfixturevalue(which)
    model = onnx.load(str(bundle / "model.onnx"))
    assert model.graph.input[0].name == INPUT_NAME and model.graph.output[0].name == OUTPUT_NAME
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic, not fixed
    torch_model, config = load_bundle(bundle)
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT_NAME: x.numpy()})[0]
    with torch.no_grad():
        expected = torch_model(x).numpy()
    assert got.shape == (batch, config.num_classes)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_int8_outside_a_run_needs_calibration_data(cnn_export, tmp_path):
    bundle, _ = cnn_export
    alone = tmp_path / "model"
    alone.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(bundle / name, alone / name)
    with pytest.raises(DataError, match="--calibration-data DIR"):
        pipeline.export_bundle(alone, int8=True)
    with pytest.raises(DataError, match="--check-data DIR"):
        pipeline.export_bundle(alone)


def test_a_failed_check_is_loud_but_keeps_the_files(cnn_export, tmp_path, monkeypatch):
    bundle, _ = cnn_export
    run = tmp_path / "run"
    shutil.copytree(bundle.parent, run, ignore=shutil.ignore_patterns("*.onnx", "tensorboard"))
    monkeypatch.setitem(pipeline.MIN_AGREEMENT, "fp32", 1.01)  # unreachable: the check must fail
    result = pipeline.export_bundle(run / "model", device="cpu")
    assert not result.passed and (run / "model" / "model.onnx").is_file()
    assert "EXPORT CHECK FAILED" in result.lines()[-1]
    assert json.loads((run / "model" / "config.json").read_text())["export"]["passed"] is False


def test_a_failed_int8_check_keeps_fp32_and_sets_int8_aside(cnn_export, export_base, tmp_path,
                                                             monkeypatch):
    # Issue 14: int8 below its bar made the whole export look failed although fp32 agreed 100 %.
    bundle, _ = cnn_export
    run = tmp_path / "run"
    shutil.copytree(bundle.parent, run, ignore=shutil.ignore_patterns("tensorboard"))
    model = run / "model"
    assert (model / "model.int8.onnx").is_file()  # an earlier int8 that passed: must not linger
    monkeypatch.setitem(pipeline.MIN_AGREEMENT, "int8", 1.01)  # unreachable: int8 must fail
    result = pipeline.export_bundle(model, int8=True, check_data=held_out(export_base), device="cpu")
    assert result.fp32.passed and not result.int8.passed and not result.passed
    assert (model / "model.onnx").is_file() and not (model / "model.int8.onnx").exists()
    assert result.int8.file == pipeline.FAILED_INT8_NAME and (model / pipeline.FAILED_INT8_NAME).is_file()
    assert result.lines()[-1].startswith("INT8 CHECK FAILED: int8 was not kept as model.int8.onnx")
    assert "model.onnx passed" in result.lines()[-1]
    recorded = json.loads((model / "config.json").read_text())["export"]
    assert recorded["fp32"]["passed"] is True and recorded["int8"]["passed"] is False
    # The next export (here fp32 only) clears the set-aside file.
    monkeypatch.setitem(pipeline.MIN_AGREEMENT, "int8", 0.98)
    assert pipeline.export_bundle(model, check_data=held_out(export_base), device="cpu").passed
    assert sorted(p.name for p in model.glob("*.onnx")) == ["model.onnx"]


def test_int8_keeps_the_first_conv_and_the_classifier_in_fp32(cnn_export):
    bundle, _ = cnn_export
    fp32 = onnx.load(str(bundle / "model.onnx"))
    first, last = end_layers(fp32).values()
    ops = {n.name: n.op_type for n in fp32.graph.node}
    assert (ops[first], ops[last]) == ("Conv", "Gemm")
    int8 = onnx.load(str(bundle / "model.int8.onnx"))
    made_by = {out: n.op_type for n in int8.graph.node for out in n.output}
    inputs = {n.name: [made_by.get(i) for i in n.input] for n in int8.graph.node}
    assert "DequantizeLinear" not in inputs[first] and "DequantizeLinear" not in inputs[last]
    quantized = [name for name, sources in inputs.items() if "DequantizeLinear" in sources]
    assert len(quantized) > 5  # the rest of the network is int8
