"""Multi-label bundles on the torch-free runtime: label sets and probabilities as Classifier gives
them, after an ONNX export that checked label sets (issue 15)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.tiny import CNN, ML_CLASSES, trained_multilabel, write_multilabel

from clarivis.runtime import Predictor, sigmoid

# The bar: the runtime gives Classifier's label set on at least 99 % of images.
MIN_SET_AGREEMENT = 0.99
# Training (shared per session) and the export take 10-20 s on 2 busy cores.
slow = pytest.mark.slow


@pytest.fixture(scope="module")
def ml_export(tmp_path_factory) -> tuple[Path, object, list[str]]:
    """(bundle, ExportResult, images): a trained multi-label bundle exported to fp32 ONNX,
    checked on 64 held-out images (another seed); `images` are its 120 training-data images
    and those 64, plus an image with no patch at all."""
    from clarivis.export import check, export_bundle, pipeline

    base = tmp_path_factory.mktemp("ml-runtime")
    # A copy: the trained bundle is shared by the session's tests, and exporting writes into it.
    trained = trained_multilabel(base, CNN)  # <base>/CNN/run/model, trained on <base>/CNN/data
    bundle = Path(shutil.copytree(trained, base / "model"))
    held = write_multilabel(base / "held", 64, seed=7).parent / "images"
    with pytest.MonkeyPatch.context() as patch:
        quick = lambda run, pixels: check.measure_speed(run, pixels, budget_s=0.05)  # noqa: E731
        patch.setattr(pipeline, "measure_speed", quick)  # speed is not under test here
        result = export_bundle(bundle, check_data=held, device="cpu")
    blank = base / "blank.png"
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(blank)
    train_images = sorted((trained.parents[1] / "data" / "images").glob("*.png"))
    images = [str(p) for p in train_images + sorted(held.glob("*.png"))] + [str(blank)]
    return bundle, result, images


@slow
def test_export_checks_label_sets_and_records_it(ml_export):
    bundle, result, _ = ml_export
    assert result.passed and result.fp32.compared == "label_set"
    assert result.fp32.agreement >= 0.999 and result.fp32.class_agreement >= 0.999
    assert "gives PyTorch's label set on" in result.lines()[1]
    config = json.loads((bundle / "config.json").read_text())
    recorded = config["export"]
    assert recorded["fp32"]["compared"] == "label_set" and recorded["fp32"]["images"] == 64
    assert recorded["label_rule"] == {key: config[key] for key in ("temperatures", "biases", "thresholds")}


@slow
def test_runtime_gives_the_classifiers_label_sets(ml_export):
    from clarivis.api import Classifier

    bundle, _, images = ml_export
    k = len(ML_CLASSES)  # every class in top_k: all probabilities compared
    expected = Classifier.load(bundle, device="cpu").predict(images, top_k=k)
    got = Predictor(bundle).predict(images, top_k=k, batch_size=13)
    assert len(got) == len(images) >= 180
    same = [{n for n, _ in a.labels} == {n for n, _ in b.labels} for a, b in zip(expected, got, strict=True)]
    worst = max(abs(dict(a.top_k)[c] - dict(b.top_k)[c]) for a, b in zip(expected, got, strict=True)
                for c in ML_CLASSES)
    print(f"\nruntime vs Classifier on {len(images)} images: label sets agree on {np.mean(same):.2%}, "
          f"max |dprob| {worst:.1e}")
    assert np.mean(same) >= MIN_SET_AGREEMENT
    assert worst <= 1e-4
    for a, b in zip(expected, got, strict=True):  # the row's other fields follow the same rule
        assert (b.source, b.error, b.ood_score) == (a.source, None, None)
        assert b.label == ";".join(n for n, _ in b.labels)
        assert b.confidence == pytest.approx(a.confidence, abs=1e-4)
    # The model learned the task: the true sets of the held-out images come back.
    truth = [set(filter(None, line.split(",")[1].split(";")))
             for line in (Path(images[120]).parents[1] / "labels.csv").read_text().splitlines()[1:]]
    assert np.mean([{n for n, _ in r.labels} == t for r, t in zip(got[120:184], truth, strict=True)]) >= 0.9


@slow
def test_an_image_with_no_label_is_an_empty_set(ml_export):
    bundle, _, images = ml_export
    row = Predictor(bundle).predict([images[-1]], top_k=2)[0]  # the plain grey image
    assert (row.labels, row.label, row.error) == ([], "", None)
    assert len(row.top_k) == 2 and row.confidence == row.top_k[0][1] < 0.5


@slow
def test_per_class_temperature_bias_and_threshold_come_from_the_bundle(ml_export, tmp_path):
    bundle, _, images = ml_export
    copy = tmp_path / "model"
    shutil.copytree(bundle, copy)
    config = json.loads((copy / "config.json").read_text())
    config["temperatures"] = [2.0, 0.5, 1.0]
    config["biases"] = [0.5, 0.0, -1.0]
    config["thresholds"] = [0.0, 1.01, 0.5]  # first class always, second never
    (copy / "config.json").write_text(json.dumps(config))
    predictor = Predictor(copy)
    logits = predictor.predict_pixels(np.stack([_pixels(predictor, p) for p in images[:8]]))
    rows = predictor.predict(images[:8], top_k=3)
    for row, logit in zip(rows, logits, strict=True):
        probs = dict(row.top_k)
        scaled = logit / np.array([2.0, 0.5, 1.0], np.float32) + np.array([0.5, 0.0, -1.0], np.float32)
        expected = sigmoid(scaled)
        assert [probs[c] for c in ML_CLASSES] == pytest.approx(expected.tolist(), abs=1e-6)
        names = {n for n, _ in row.labels}
        assert ML_CLASSES[0] in names and ML_CLASSES[1] not in names
        assert (ML_CLASSES[2] in names) == (expected[2] >= 0.5)


def test_sigmoid_is_stable_at_the_extremes():
    x = np.array([[-1000.0, -20.0, 0.0, 20.0, 1000.0]], np.float32)
    with np.errstate(over="raise", invalid="raise"):
        y = sigmoid(x)
    assert y.dtype == np.float32
    assert y[0].tolist() == pytest.approx([0.0, 2.06e-9, 0.5, 1.0, 1.0], abs=1e-9)


def _pixels(predictor: Predictor, path: str) -> np.ndarray:
    from clarivis.runtime import normalize

    return normalize(predictor.prepare(path)[None], predictor.preprocess)[0]


@slow
def test_predict_cli_on_onnx_prints_the_sets_torch_prints(ml_export, capsys):
    import csv
    import io

    from tests.e2e.test_cli import run_cli

    bundle, _, images = ml_export
    held = Path(images[120]).parent
    tables = {}
    for backend in ("torch", "onnx"):
        code, out, err = run_cli(["predict", bundle, held, "--format", "csv", "--backend", backend,
                                  "--device", "cpu"], capsys)
        assert code == 0, err
        tables[backend] = list(csv.DictReader(io.StringIO(out)))
    assert [r["labels"] for r in tables["onnx"]] == [r["labels"] for r in tables["torch"]]
    assert len(tables["onnx"]) == 64 and list(tables["onnx"][0])[-3:] == [f"prob_{c}" for c in ML_CLASSES]
    for a, b in zip(tables["torch"], tables["onnx"], strict=True):
        assert [float(b[f"prob_{c}"]) for c in ML_CLASSES] == pytest.approx(
            [float(a[f"prob_{c}"]) for c in ML_CLASSES], abs=1e-5)
