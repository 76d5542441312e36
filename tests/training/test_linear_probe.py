"""Linear probe: the fitted head is what sklearn fits, it lands in the model's classifier, the
backbone stays as loaded, and the bundle works like any other."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.linear_model import LogisticRegression
from tests.tiny import CNN, VIT, write_image

import clarivis
from clarivis.training.linear_probe import fit_logistic_head


def blobs(num_classes: int, per_class: int, dim: int = 20, draw: int = 0):
    """Gaussian classes around fixed centres; `draw` picks another sample of the same classes."""
    centres = np.random.default_rng(0).normal(0, 3, (num_classes, dim))
    rng = np.random.default_rng(1 + draw)
    x = np.concatenate([c + rng.normal(0, 1, (per_class, dim)) for c in centres])
    return x * 50 + 7, np.repeat(np.arange(num_classes), per_class)  # scaled, shifted features


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_head_on_raw_features_equals_sklearn_on_standardized(num_classes):
    x, y = blobs(num_classes, 15)
    head = fit_logistic_head(x, y, num_classes, reg_c=0.5)
    z = (x - x.mean(0)) / (x.std(0) + 1e-6)
    reference = LogisticRegression(C=0.5, max_iter=1000).fit(z, y).predict_proba(z)
    assert head.weight.shape == (num_classes, 20) and head.bias.shape == (num_classes,)
    np.testing.assert_allclose(softmax(head.logits(x)), reference, atol=1e-4)


def test_cross_validation_picks_c_and_generalises():
    x, y = blobs(3, 10)
    head = fit_logistic_head(x, y, 3)
    assert head.cv_accuracy is not None and head.cv_accuracy > 0.9
    x_new, y_new = blobs(3, 50, draw=1)
    assert (head.logits(x_new).argmax(1) == y_new).mean() > 0.95


def test_separable_classes_get_confident_probabilities():
    # Every C of the grid reaches 100% CV accuracy here; scoring CV by accuracy took the first
    # of the tie (the strongest penalty) and said ~0.55 for images it could not get wrong.
    x, y = blobs(2, 12)
    head = fit_logistic_head(x, y, 2)
    assert head.cv_accuracy == 1.0 and head.reg_c > 1e-3
    x_new, y_new = blobs(2, 50, draw=1)
    probabilities = softmax(head.logits(x_new))
    assert (probabilities.argmax(1) == y_new).all() and probabilities.max(1).mean() > 0.9


def test_class_without_training_images_is_never_predicted():
    x, y = blobs(3, 8)
    head = fit_logistic_head(x, y, 4)
    assert (head.logits(x).argmax(1) != 3).all()


@pytest.fixture(scope="module")
def base_runs(tmp_path_factory):
    """Per model, a briefly trained bundle whose weights serve as the 'pretrained' backbone."""
    root = tmp_path_factory.mktemp("probe")
    data = root / "data"
    for i in range(12):
        write_image(data / "red" / f"r{i}.png", (220, 20, 20))
        write_image(data / "blue" / f"b{i}.png", (20, 20, 220))
        write_image(data / "green" / f"g{i}.png", (20, 200, 20))
    runs = {name: clarivis.train(data, out=root / f"base-{name}", model=name, epochs=1,
                                 batch_size=8, workers=0, img_size=32, device="cpu", report=False)
            for name in (CNN, VIT)}
    return data, runs


@pytest.mark.parametrize("model", [CNN, VIT])
def test_probe_bundle_keeps_the_backbone_and_predicts_with_the_fitted_head(base_runs, tmp_path, model):
    data, runs = base_runs
    weights = runs[model].bundle_dir / "model.safetensors"
    result = clarivis.train(data, out=tmp_path / "probe", model=model, weights=str(weights),
                            linear_probe=True, img_size=32, device="cpu", val_fraction=0.25)
    run = result.run_dir
    record = json.loads((run / "linear_probe.json").read_text())
    assert record["linear_probe"] and record["val_accuracy"] == result.best_val_accuracy == 1.0
    assert (run / "metrics.jsonl").is_file()
    report = (run / "report.html").read_text()
    assert "<h2>Linear probe</h2>" in report and "cross-validated accuracy" in report
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["training"]["method"] == "linear_probe" and config["num_classes"] == 3

    base, probe = load_file(str(weights)), load_file(str(run / "model" / "model.safetensors"))
    head = "fc" if model == CNN else "head"
    backbone = [k for k in base if not k.startswith(head + ".")]
    assert backbone and all(torch.equal(base[k], probe[k]) for k in backbone)  # frozen, loaded
    assert not torch.equal(base[f"{head}.weight"], probe[f"{head}.weight"])  # the new head

    # The bundle's predictions are the head applied to clarivis.embed's embeddings.
    emb = clarivis.embed(data, model=result.bundle_dir)
    w, b = probe[f"{head}.weight"].numpy(), probe[f"{head}.bias"].numpy()
    expected = [config["class_names"][i] for i in (emb.vectors @ w.T + b).argmax(1)]
    predicted = {p.source: p.label for p in
                 clarivis.Classifier.load(result.bundle_dir, reject=False).predict(emb.paths)}
    assert [predicted[p] for p in emb.paths] == expected
    assert (np.array(expected) == np.array(emb.labels)).mean() == 1.0
