"""Suspected label errors from out-of-fold probabilities (cleanlab)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tests.check_data_gen import flip_labels, make_colors
from tests.tiny import CNN, VIT, random_weights, train_bundle

from clarivis.data.sources import Sample, index_dataset
from clarivis.datacheck import label_features, label_issues
from clarivis.datacheck.label_issues import (
    _assign_folds,
    find_label_issues,
    logreg_oof_probabilities,
    rank_label_issues,
)
from clarivis.errors import DataError, ModelError


def _blobs(n_per_class=60, classes=3, flips=9, seed=0):
    """Well separated Gaussian blobs in 8 dimensions with `flips` labels changed."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n_per_class)
    features = rng.normal(size=(len(labels), 8)) + 4 * np.eye(classes, 8)[labels]
    flipped = rng.choice(len(labels), flips, replace=False)
    given = labels.copy()
    given[flipped] = (labels[flipped] + 1) % classes
    return features, given, labels, set(flipped.tolist())


def test_rank_puts_the_least_likely_label_first():
    samples = [Sample(f"{i}.png", "ab"[i % 2]) for i in range(40)]
    labels = np.array([i % 2 for i in range(40)])
    probs = np.where(np.eye(2)[labels] == 1, 0.95, 0.05)
    probs[[3, 10]] = [[0.97, 0.03], [0.98, 0.02]]  # 3: labeled b, surely a; 10: labeled a
    probs[7] = [0.99, 0.01]  # labeled b, surely a
    issues = rank_label_issues(samples, ["train"] * 40, ["a", "b"], labels, probs)
    assert [i.path for i in issues] == ["7.png", "3.png"]
    assert issues[0].given_label == "b" and issues[0].suggested_label == "a"
    assert issues[0].score == pytest.approx(0.01) and issues[0].score < issues[1].score


def test_logreg_out_of_fold_finds_flipped_labels():
    features, given, truth, flipped = _blobs()
    fold_of = _assign_folds(given, 5, seed=0)
    probs, reg_c = logreg_oof_probabilities(features, given, fold_of, 3)
    assert reg_c in label_issues.LOGREG_C_GRID
    assert probs.shape == (180, 3) and np.allclose(probs.sum(1), 1)
    samples = [Sample(f"{i}", "abc"[g]) for i, g in enumerate(given)]
    issues = rank_label_issues(samples, ["train"] * len(samples), ["a", "b", "c"], given, probs)
    found = {int(i.path) for i in issues}
    assert len(found & flipped) / len(flipped) >= 0.8
    # Ranked first: every image the out-of-fold model disagrees with is a suspect (clean ones on
    # the blobs' overlap too), the flipped ones lead the list.
    first = {int(i.path) for i in issues[:len(flipped)]}
    assert len(first & flipped) / len(flipped) >= 0.8, (first, flipped)
    assert all(i.suggested_label == "abc"[truth[int(i.path)]] for i in issues if int(i.path) in flipped)


def test_small_classes_reduce_folds_instead_of_crashing(tmp_path):
    features, given, _, _ = _blobs(n_per_class=20, flips=0)
    # Class 'c' keeps 3 images, class 'd' a single one.
    keep = [i for i in range(len(given)) if given[i] != 2 or i < 43]
    samples = [Sample(f"{i}", "abc"[given[i]]) for i in keep] + [Sample("lonely", "d")]
    with pytest.raises(DataError, match="folds"):
        find_label_issues(samples, ["train"] * len(samples), folds=1)
    kept, _, names, k, notes = label_issues._usable(samples, ["train"] * len(samples), 5)
    assert names == ["a", "b", "c"] and k == 3 and len(kept) == len(samples) - 1
    assert any("single image: d" in n for n in notes) and any("3 folds" in n for n in notes)


def test_one_image_per_class_is_a_clear_error():
    samples = [Sample("x", "a"), Sample("y", "b"), Sample("z", "b")]
    with pytest.raises(DataError, match="at least 2 classes"):
        find_label_issues(samples, ["train"] * 3)


@pytest.mark.slow
def test_bundle_embeddings_find_flipped_labels(tmp_path):
    """(a): a tiny bundle's embeddings + logistic regression; colours separate linearly even in
    the features of a briefly trained test_resnet."""
    bundle = train_bundle(tmp_path / "bundle")
    data = make_colors(tmp_path / "colors", per_class=30)
    flipped = set(flip_labels(data, 6))
    samples = index_dataset(data).all_samples
    result = find_label_issues(samples, ["train"] * len(samples), model=bundle, device="cpu")
    found = {i.path for i in result.issues}
    assert result.method == "embeddings+logreg" and result.folds == 5 and result.checked == 120
    assert len(found & flipped) / len(flipped) >= 0.6, (found, flipped)


@pytest.mark.slow
def test_cross_validated_training_finds_flipped_labels(tmp_path):
    """(b): test_resnet trained on 4 of 5 folds each (12 epochs of the fast recipe)."""
    data = make_colors(tmp_path / "colors", per_class=30)
    flipped = set(flip_labels(data, 6))
    samples = index_dataset(data).all_samples
    result = find_label_issues(samples, ["train"] * len(samples), device="cpu",
                               train_settings={"model": CNN, "img_size": 32, "workers": 0,
                                               "epochs": 12})
    found = {i.path for i in result.issues}
    assert result.method == "cross-validated training" and result.oof_accuracy > 0.8
    assert len(found & flipped) / len(flipped) >= 0.6, (found, flipped)


@pytest.mark.parametrize("name", [CNN, VIT])
def test_backbone_features_rank_flipped_labels_first(tmp_path, name):
    """(a) on a timm name + weights file: colours separate linearly even in random features.
    Measured over 5 seeds (data, flips and weights): test_resnet ranks 8/8 flipped labels into
    the first 16 suspects every time, test_vit 7-8/8; about 8 s each on one core."""
    weights = random_weights(tmp_path / "w.safetensors", name)
    data = make_colors(tmp_path / "colors", per_class=30)
    flipped = set(flip_labels(data, 8))
    samples = index_dataset(data).all_samples
    result = find_label_issues(samples, ["train"] * len(samples), model=name, weights=weights,
                               img_size=32, device="cpu")
    first = {i.path for i in result.issues[:16]}
    assert result.method == "embeddings+logreg" and result.reg_c in label_issues.LOGREG_C_GRID
    assert result.features == f"{name} (weights w.safetensors, 32 px)"
    assert len(first & flipped) >= 6, (first, flipped)


def test_weights_without_a_model_name_the_backbone(tmp_path):
    """The architecture comes from a pretrain backbone's metadata and backbone.json (with its
    size), else from a timm-style file name, else the default backbone."""
    from safetensors.torch import load_file, save_file

    plain = random_weights(tmp_path / "weights.safetensors", CNN)
    source = label_features.choose_features(weights=plain)
    assert source.model == label_features.DEFAULT_BACKBONE and source.why == "default backbone"
    named = random_weights(tmp_path / f"{CNN}.r160_in1k.safetensors", CNN)
    assert label_features.choose_features(weights=named).model == CNN
    run = tmp_path / "run"
    run.mkdir()
    save_file(load_file(plain), run / "backbone.safetensors", metadata={"architecture": VIT})
    source = label_features.choose_features(weights=run / "backbone.safetensors")
    assert source.model == VIT and source.img_size is None
    (run / "backbone.json").write_text(json.dumps({"model": VIT, "img_size": 48}))
    source = label_features.choose_features(weights=run / "backbone.safetensors")
    assert (source.model, source.img_size) == (VIT, 48)
    assert label_features.choose_features(CNN, weights=plain, img_size=40).img_size == 40


def test_cached_hub_weights_are_used_offline(tmp_path, monkeypatch):
    """Nothing given: the default backbone's hub weights when they sit in the hub cache (a fake
    cache here, in the hub's layout); none cached: per-fold training (None)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(label_features, "DEFAULT_BACKBONE", CNN)
    assert label_features.choose_features() is None
    with pytest.raises(ModelError, match="needs --weights FILE or --pretrained"):
        label_features.choose_features(CNN)
    repo = tmp_path / "hub" / "models--timm--test_resnet.r160_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    cached = random_weights(repo / "snapshots" / "abc123" / "model.safetensors", CNN)
    source = label_features.choose_features()
    assert (source.model, source.weights, source.pretrained) == (CNN, str(cached), False)
    assert label_features.choose_features(cached=False) is None
    named = label_features.choose_features(CNN, pretrained=True)  # read from the cache: no request
    assert (named.weights, named.pretrained) == (str(cached), False)


def test_feature_errors_are_one_line(tmp_path):
    weights = random_weights(tmp_path / "w.safetensors", CNN)
    cases = [
        (dict(model="no_such_net", weights=weights), "unknown model 'no_such_net'"),
        (dict(model=CNN, weights=tmp_path / "missing.safetensors"), "not found"),
        (dict(model=CNN, weights=weights, pretrained=True), "not both"),
        (dict(model=str(tmp_path), weights=weights), "ModelBundle with its own weights"),
    ]
    for kwargs, fragment in cases:
        with pytest.raises(ModelError, match=fragment) as caught:
            label_features.choose_features(**kwargs)
        assert "\n" not in str(caught.value)
    data = make_colors(tmp_path / "colors", per_class=5)
    samples = index_dataset(data).all_samples
    with pytest.raises(ModelError, match="do not fit 'test_vit'") as caught:  # a CNN's weights
        find_label_issues(samples, ["train"] * len(samples), model=VIT, weights=weights, img_size=32)
    assert "\n" not in str(caught.value)
