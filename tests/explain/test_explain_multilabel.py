"""Explaining a multi-label model: a map per predicted label, for that class's logit; with no
label predicted, one map of the most probable class, said so."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.e2e.test_cli import run_cli
from tests.tiny import CNN, VIT, multilabel_bundle, multilabel_classifier, tiny_classifier, write_image

from clarivis.explain import explain, explain_overlay
from clarivis.explain.explanations import caption


@pytest.mark.parametrize("name, method", [(CNN, "gradcam"), (VIT, "ig")])
def test_one_map_per_predicted_label(tmp_path, name, method):
    clf = multilabel_classifier(name, thresholds=[0.0, 0.0, 1.1])  # blue and green always, red never
    images = [write_image(tmp_path / "a.png", (200, 30, 30)), write_image(tmp_path / "b.png", (30, 30, 200))]
    results = explain(clf, images, method=method, out=tmp_path / "out")

    assert len(results) == 4 and [r.source for r in results] == [str(images[0])] * 2 + [str(images[1])] * 2
    predictions = {p.source: p for p in clf.predict(images)}
    for r in results:
        expected = predictions[r.source].labels  # [(label, probability)], most probable first
        assert [n for n, _ in r.labels] == [n for n, _ in expected]
        assert {n for n, _ in expected} == {"blue", "green"}
        assert [p for _, p in r.labels] == pytest.approx([p for _, p in expected], abs=1e-6)
        assert r.label == r.target and r.confidence == pytest.approx(dict(expected)[r.target], abs=1e-6)
        assert r.heatmap.shape == (32, 32) and 0.0 <= r.heatmap.min() and r.heatmap.max() <= 1.0
        assert r.png == str(tmp_path / "out" / f"{Path(r.source).stem}_{r.target}_{method}.png")
        assert Image.open(r.png).size == (2 * 224 + 8, 224 + 28)
        assert caption(r) == f"{r.target} {r.confidence:.0%} · {method}"
    first = results[:2]
    assert [r.target for r in first] == [n for n, _ in predictions[str(images[0])].labels]
    # each map is the one for its class's logit, as explain(target=...) draws it
    [blue] = explain(clf, images[0], method=method, target="blue")
    np.testing.assert_allclose(blue.heatmap, next(r for r in first if r.target == "blue").heatmap, atol=1e-5)
    row = results[0].to_dict()
    assert "heatmap" not in row and [d["label"] for d in row["labels"]] == [n for n, _ in first[0].labels]


def test_no_label_predicted_explains_the_top_class_and_says_so(tmp_path):
    clf = multilabel_classifier(CNN, thresholds=[1.1, 1.1, 1.1])
    image = write_image(tmp_path / "x.png")
    [result] = explain(clf, image)
    [prediction] = clf.predict(image)
    assert prediction.label == "" and result.label == "" and result.labels == []
    top, probability = prediction.top_k[0]
    assert result.target == top and result.confidence == pytest.approx(probability, abs=1e-6)
    assert caption(result) == f"no label predicted · map for the top class {top} {probability:.0%} · gradcam"
    # a --target that is not predicted is explained too, and the caption says it is not predicted
    clf = multilabel_classifier(CNN, thresholds=[0.0, 0.0, 1.1])
    [red] = explain(clf, image, target="red")
    assert red.target == "red" and red.label == "" and [n for n, _ in red.labels] != []
    assert caption(red).startswith("red ") and "not predicted (" in caption(red)


def test_the_service_overlay_answers_the_label_set():
    clf = multilabel_classifier(CNN, thresholds=[0.0, 0.0, 1.1])
    png, label, confidence = explain_overlay(clf, Image.new("RGB", (32, 32), (90, 90, 90)))
    assert sorted(label.split(";")) == ["blue", "green"] and 0.0 < confidence <= 1.0
    assert Image.open(io.BytesIO(png)).format == "PNG"


def test_single_label_rows_keep_their_fields(tmp_path):
    [result] = explain(tiny_classifier(CNN), write_image(tmp_path / "x.png"))
    assert "labels" not in result.to_dict() and result.labels is None


def test_the_explain_command_lists_a_row_per_map(tmp_path, capsys):
    bundle = multilabel_bundle(tmp_path / "model", thresholds=[0.0, 0.0, 1.1])
    image = write_image(tmp_path / "x.png")
    code, out, _ = run_cli(["explain", bundle, image, "--out", tmp_path / "maps"], capsys)
    assert code == 0 and sorted(p.name for p in (tmp_path / "maps").iterdir()) == [
        "x_blue_gradcam.png", "x_green_gradcam.png"]
    none = multilabel_bundle(tmp_path / "none", thresholds=[1.1, 1.1, 1.1])
    code, out, _ = run_cli(["explain", none, image, "--out", tmp_path / "top"], capsys)
    assert code == 0 and "(not predicted)" in out and len(list((tmp_path / "top").iterdir())) == 1
