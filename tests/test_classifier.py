"""Classifier (classifier.py): load restores everything from the bundle alone; predict,
evaluate and open-set rejection; the one batch loop, iter_batches, keeps the input order."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from tests.tiny import BLUE, CNN, RED, VIT, train_red_blue, write_image

import clarivis
from clarivis import classifier
from clarivis.classifier import Classifier, ImageBatch, Unusable
from clarivis.errors import ClarivisError


@pytest.fixture(scope="module", params=[CNN, VIT])
def trained(request, tmp_path_factory):
    """(data folder, TrainResult): 8 red and 8 blue 40x24 images, 2 epochs at 32 px."""
    root = tmp_path_factory.mktemp("api")
    result = train_red_blue(root, request.param, per_class=8, size=(40, 24), nested=False, epochs=2)
    return root / "train", result


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


def _mixed_folder(root):
    """a, c, d, e readable and b unreadable: sorted by name, the unreadable one second."""
    for name, colour in [("a", RED), ("c", BLUE), ("d", RED), ("e", BLUE)]:
        write_image(root / f"{name}.png", colour, size=(40, 30))
    (root / "b.png").write_bytes(b"not a png")
    return root


def _name(source: str) -> str:
    return source.rsplit("/", 1)[-1]


@pytest.mark.parametrize("threads", [True, False])
def test_iter_batches_keeps_the_input_order_around_unusable_inputs(tiny_bundle, tmp_path, threads):
    """A batch is handed over before the next Unusable, so the stream is in input order."""
    folder = _mixed_folder(tmp_path / "images")
    clf = Classifier.load(tiny_bundle, device="cpu")
    inputs = [folder, tmp_path / "missing.png", Image.new("RGB", (20, 50), RED), folder / "a.png"]
    items = list(clf.iter_batches(inputs, batch_size=2, threads=threads))
    kinds = [(type(item).__name__, [_name(s) for s in item.sources] if isinstance(item, ImageBatch)
              else _name(item.source)) for item in items]
    assert kinds == [
        ("ImageBatch", ["a.png"]),  # cut short by the unreadable b.png that follows
        ("Unusable", "b.png"),
        ("ImageBatch", ["c.png", "d.png"]),  # full
        ("ImageBatch", ["e.png"]),  # cut short by the missing file
        ("Unusable", "missing.png"),
        ("ImageBatch", ["<image 2>", "a.png"]),  # an in-memory image is named by its position
    ]
    unusable = [item for item in items if isinstance(item, Unusable)]
    assert all(item.reason for item in unusable) and "not found" in unusable[1].reason
    assert str(folder / "b.png") not in unusable[0].reason  # the reason, without the path again
    for batch in (item for item in items if isinstance(item, ImageBatch)):
        assert batch.pixels.dtype == torch.uint8 and batch.pixels.shape[1:] == (3, 32, 32)
        assert len(batch.sources) == len(batch.pixels)


def test_exclude_passes_files_over_without_decoding(tiny_bundle, tmp_path, monkeypatch):
    folder = _mixed_folder(tmp_path / "images")
    decoded = []
    decode = classifier.model_pixels

    def spy(path, img_size, **kwargs):
        decoded.append(_name(path))
        return decode(path, img_size, **kwargs)

    monkeypatch.setattr(classifier, "model_pixels", spy)
    clf = Classifier.load(tiny_bundle, device="cpu")
    excluded = ("b.png", "d.png")  # b.png is unreadable: excluded, it is not an error either
    items = list(clf.iter_batches(folder, batch_size=4, exclude=lambda path: path.endswith(excluded)))
    assert [(type(i).__name__, [_name(s) for s in i.sources] if isinstance(i, ImageBatch) else
             (_name(i.source), i.reason)) for i in items] == [
        ("ImageBatch", ["a.png"]), ("Unusable", ("b.png", None)), ("ImageBatch", ["c.png"]),
        ("Unusable", ("d.png", None)), ("ImageBatch", ["e.png"])]
    assert sorted(decoded) == ["a.png", "c.png", "e.png"]


def test_iter_batches_refuses_a_batch_size_below_one(tiny_bundle, tmp_path):
    clf = Classifier.load(tiny_bundle, device="cpu")
    with pytest.raises(ClarivisError, match="--batch-size must be at least 1"):
        list(clf.iter_batches(_mixed_folder(tmp_path / "images"), batch_size=0))
