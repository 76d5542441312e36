"""The backend choice shared by `predict --backend` and `serve --backend`: one check, one loader,
the same rows from either backend for files, folders and globs."""

from __future__ import annotations

import pytest
from tests.tiny import held_out

from clarivis.batch_predict.backends import load_predictor, predict_rows
from clarivis.classifier import Classifier
from clarivis.errors import ClarivisError
from clarivis.prediction import BACKENDS, check_backend
from clarivis.runtime import Predictor
from clarivis.serve.backends import OnnxBackend, TorchBackend, load_backend


def test_unknown_backend_is_one_line():
    assert BACKENDS == ("torch", "onnx")
    with pytest.raises(ClarivisError, match="unknown backend 'tensorrt'; choose one of torch, onnx"):
        check_backend("tensorrt")
    with pytest.raises(ClarivisError, match="unknown backend"):
        load_predictor("tensorrt", "nowhere")


def test_each_backend_loads_its_implementation(cnn_export):
    bundle, _ = cnn_export
    assert isinstance(load_predictor("torch", bundle, device="cpu"), Classifier)
    assert isinstance(load_predictor("onnx", bundle), Predictor)
    assert load_predictor("onnx", bundle, int8=True).model_path.name == "model.int8.onnx"
    assert isinstance(load_backend("torch", bundle, "cpu"), TorchBackend)  # the service's wrappers
    assert isinstance(load_backend("onnx", bundle), OnnxBackend)


def test_both_backends_expand_folders_and_globs_alike(cnn_export, export_base, tmp_path):
    bundle, _ = cnn_export
    images = held_out(export_base)
    inputs = [str(images / "red"), str(images / "blue" / "*.png"), str(tmp_path / "missing.png")]
    torch_rows = list(predict_rows(bundle, inputs, top_k=2, device="cpu"))
    onnx_rows = list(predict_rows(bundle, inputs, backend="onnx", top_k=2))
    assert [r.source for r in torch_rows] == [r.source for r in onnx_rows]
    assert len(torch_rows) == 15 + 8 + 1 and torch_rows[-1].error == "file not found"
    assert [r.label for r in torch_rows] == [r.label for r in onnx_rows]
