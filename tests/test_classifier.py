"""The Python API: Classifier.load restores everything from the bundle alone."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from tests.tiny import CNN, VIT, write_image

import clarivis


@pytest.fixture(scope="module", params=[CNN, VIT])
def trained(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    for i in range(8):
        write_image(root / "data" / "red" / f"r{i}.png", (220, 20, 20), size=(40, 24))
        write_image(root / "data" / "blue" / f"b{i}.png", (20, 20, 220), size=(40, 24))
    result = clarivis.train(root / "data", out=root / "run", model=request.param, epochs=2,
                            batch_size=8, workers=0, img_size=32)
    return root / "data", result


def test_load_restores_preprocessing_and_classes(trained):
    _, result = trained
    clf = clarivis.Classifier.load(result.bundle_dir)
    config = json.loads((result.bundle_dir / "config.json").read_text())
    assert clf.class_names == ["blue", "red"] == config["class_names"]
    assert clf.config.preprocess.img_size == 32 and clf.config.resize_mode == "pad"


def test_predictions_are_identical_after_reload_and_for_pil_images(trained):
    data, result = trained
    files = sorted(str(p) for p in (data / "red").iterdir())
    first = clarivis.Classifier.load(result.bundle_dir).predict(files, top_k=2)
    second = clarivis.Classifier.load(result.run_dir).predict(files, top_k=2)  # run folder too
    assert [p.top_k for p in first] == [p.top_k for p in second]
    from_pil = clarivis.Classifier.load(result.bundle_dir).predict(
        [Image.open(files[0]).convert("RGBA")])
    assert [lbl for lbl, _ in from_pil[0].top_k] == [lbl for lbl, _ in first[0].top_k]
    assert [p for _, p in from_pil[0].top_k] == pytest.approx([p for _, p in first[0].top_k])
    assert from_pil[0].source == "<image 0>"


def test_evaluate_returns_typed_result(trained):
    data, result = trained
    metrics = clarivis.Classifier.load(result.bundle_dir).evaluate(data)
    assert isinstance(metrics, clarivis.EvaluationResult)
    assert metrics.num_samples == 16 and 0 <= metrics.accuracy <= 1
    assert sum(map(sum, metrics.confusion_matrix)) == 16


def test_predict_equals_the_model_on_the_eval_transform(trained):
    """Predict's split preprocessing (resize per image, normalise per batch) and its memory
    layout change nothing: same probabilities as the plain per-image transform in NCHW."""
    import torch

    from clarivis.data.dataset import pil_to_uint8
    from clarivis.data.io import load_image

    data, result = trained
    clf = clarivis.Classifier.load(result.bundle_dir)
    files = sorted(str(p) for p in (data / "blue").iterdir())
    batch = torch.stack([clf.transform(pil_to_uint8(load_image(f))) for f in files])
    with torch.no_grad():
        expected = torch.softmax(clf.model(batch.contiguous()).float() / clf.config.temperature, 1)
    got = clf.predict(files, top_k=2, batch_size=3)  # several batches, one of them partial
    for row, probs in zip(got, expected, strict=True):
        assert row.confidence == pytest.approx(float(probs.max()), abs=1e-5)
        assert row.label == clf.class_names[int(probs.argmax())]


def test_open_set_rejection_answers_unknown_and_can_be_turned_off(trained, tmp_path):
    import shutil

    from clarivis.models.bundle import update_bundle_config

    data, result = trained
    bundle = shutil.copytree(result.bundle_dir, tmp_path / "model")
    # A threshold above every score: each image counts as unlike the training classes.
    update_bundle_config(bundle, ood={"score": "energy", "threshold": 1e9, "accept_rate": 0.95})
    rejected = clarivis.Classifier.load(bundle).predict(data / "red", top_k=2)
    assert {p.label for p in rejected} == {"unknown"}
    assert all(p.ood_score < 1e9 and p.top_k[0][0] in ("red", "blue") for p in rejected)
    kept = clarivis.Classifier.load(bundle, reject=False).predict(data / "red", top_k=2)
    assert [p.label for p in kept] == [p.top_k[0][0] for p in rejected]
    assert [p.ood_score for p in kept] == pytest.approx([p.ood_score for p in rejected])
